"""pytest-benchmark suites: `pytest bench/ --benchmark-only` (not part of the test run)."""
