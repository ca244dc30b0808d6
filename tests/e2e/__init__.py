"""End-to-end tests: a real ``kakehashi serve`` process driven over HTTP by real clients."""
