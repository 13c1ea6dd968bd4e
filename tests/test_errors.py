"""vaekit.errors: the user-facing error classes and the one-line quoting of library errors."""

import pytest

from vaekit import errors


@pytest.mark.parametrize(
    "exc, line",
    [
        (ValueError("bad header\nat byte 12\n"), "bad header"),
        (OSError("  padded  "), "padded"),
        (EOFError(), "EOFError"),
        (KeyError(), "KeyError"),
    ],
)
def test_one_line_quotes_the_first_line_or_the_class(exc, line):
    assert errors.one_line(exc) == line


def test_every_user_error_is_a_value_error_and_not_shared_by_default():
    for cls in (errors.DataError, errors.ConfigError, errors.CheckpointError):
        e = cls("x")
        assert isinstance(e, errors.VaekitError) and isinstance(e, ValueError)
        assert e.shared is False
    e = errors.DataError("y")
    e.shared = True  # what vaekit.distributed sets on an error every rank raised
    assert e.shared and errors.DataError("z").shared is False
