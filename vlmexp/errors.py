"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class VlmexpError(Exception):
    """A problem the user can fix (bad config, bad input file, unreachable server)."""

    exit_code = 2


class ConfigError(VlmexpError):
    """A config key holds a bad value."""


class DataError(VlmexpError):
    """An input file is malformed; the message names the file and line."""


class EngineError(VlmexpError):
    """An engine cannot start or its server went away for good."""


class RunLocked(VlmexpError):
    """Another process is running the same config on the same data and model."""


class TrackingError(VlmexpError):
    """The tracking server cannot be reached, or stopped answering before the run's records were sent."""
