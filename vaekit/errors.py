"""User-facing errors.

Every problem a user can cause (bad data, bad config, bad checkpoint, bad arguments)
raises a subclass of :class:`VaekitError` with a one-line message that names the
problem. The CLI prints it as ``vaekit: error: <message>`` and exits with status 2;
library users catch it like any ``ValueError``.
"""


class VaekitError(ValueError):
    """Base class: a one-line, user-facing message; never a bug in vaekit.

    Attributes:
        shared: True when every process of a torchrun job raised this same error (rank 0
            reported it), so that only rank 0 prints it; set by ``vaekit.distributed`` and
            the training loop.
    """

    shared: bool = False


class DataError(VaekitError):
    """Missing, corrupt, malformed or out-of-range data."""


class ConfigError(VaekitError):
    """Unknown preset, unknown key, wrong type or invalid value in a config."""


class CheckpointError(VaekitError):
    """Missing, truncated or corrupt run folder or checkpoint."""


def one_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its class name when empty), for quoting a library's
    error (numpy, gzip, PIL, urllib) inside a one-line :class:`VaekitError`."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the work cleanly, after saving what it had done; the message is one
    line saying where it stopped and how to go on. The CLI prints it and exits with status 130."""
