"""Helpers shared by kakehashi's test suites: OpenAPI validation, server processes, old SDKs."""
