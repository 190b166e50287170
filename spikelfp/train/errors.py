"""The error every bad configuration raises (one line naming the key)."""


class ConfigError(ValueError):
    """A configuration key or value is not allowed; the message names it."""
