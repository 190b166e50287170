"""The ``ffzero`` trainer (being written)."""
