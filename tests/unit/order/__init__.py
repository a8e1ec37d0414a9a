"""Unit tests of the order service (a package: its module names repeat those of tests/unit/dispatch)."""
