"""Backends: where completions come from (the local engine, or a fake for tests)."""
