"""Runnable examples; a package only so tests and mypy can import them as ``examples.*``."""
