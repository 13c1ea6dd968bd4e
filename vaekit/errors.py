"""User-facing errors.

Every problem a user can cause (bad data, bad config, bad checkpoint, bad arguments)
raises a subclass of :class:`VaekitError` with a one-line message that names the
problem. The CLI prints it as ``vaekit: error: <message>`` and exits with status 2;
library users catch it like any ``ValueError``.
"""


class VaekitError(ValueError):
    """Base class: a one-line, user-facing message; never a bug in vaekit."""


class DataError(VaekitError):
    """Missing, corrupt, malformed or out-of-range data."""


class ConfigError(VaekitError):
    """Unknown preset, unknown key, wrong type or invalid value in a config."""


class CheckpointError(VaekitError):
    """Missing, truncated or corrupt run folder or checkpoint."""
