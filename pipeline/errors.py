"""The errors a user's input can cause, at the ground floor so that every module can raise them."""


class DataError(RuntimeError):
    """A dataset could not be loaded; the message says how to get it or what to change."""


class ConfigError(ValueError):
    """A configuration mistake, reported as one line naming the key."""
