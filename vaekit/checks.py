"""Checks shared by every layer: registry lookup with one error message, image shapes.

A registry is a plain dict from name to constructor; :func:`lookup` is the only way code
reads one, so every "unknown X" error looks the same and suggests the closest name.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from .errors import ConfigError

V = TypeVar("V")


def shown(text: object) -> str:
    """``text`` for a one-line message: newlines and other unprintables escaped."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def lookup(registry: Mapping[str, V], name: object, what: str) -> V:
    """``registry[name]``, or a :class:`ConfigError` naming ``what``, the closest known name and all of them.

    Args:
        registry: name -> value (usually a constructor).
        name: the requested key (a config value, so possibly not even a string).
        what: what the registry holds, for the message, e.g. ``"likelihood"`` or ``"model.prior"``.
    """
    if isinstance(name, str) and name in registry:
        return registry[name]
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown {what} '{shown(name)}'{hint}; known: {', '.join(registry)}")


def image_shape(data_shape: tuple[int, ...], what: str) -> tuple[int, int, int]:
    """``data_shape`` as ``(C, H, W)``, or a :class:`ConfigError` saying that ``what`` needs images."""
    if len(data_shape) != 3:
        raise ConfigError(f"{what} needs image data [C, H, W]; got shape {tuple(data_shape)}")
    c, h, w = (int(s) for s in data_shape)
    return c, h, w
