"""schemathesis configuration and hooks for the fuzzer run of tests/e2e/test_fuzz.py."""
