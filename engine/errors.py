"""The engine's one error type for a run that cannot start: `ConfigError`."""


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the fix."""
