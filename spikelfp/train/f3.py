"""The ``f3`` trainer (being written)."""
