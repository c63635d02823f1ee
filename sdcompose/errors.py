"""Errors a user sees: one sentence that says what is wrong and what to do."""
from __future__ import annotations

import difflib
from collections.abc import Iterable



class SdcomposeError(Exception):
    """Base of every error sdcompose raises on purpose: a boundary (CLI, UI, HTTP) catches this one class."""


class PluginError(SdcomposeError):
    """Raised by a plugin (or about one) with a message a user can act on; re-exported by the plugin API."""


class ValidationError(SdcomposeError, ValueError):
    """A request, file or setting is out of bounds; nothing was run."""


class ModelError(SdcomposeError):
    """A model is missing, corrupt, unsafe or does not fit the composition."""


class CatalogError(ModelError):
    """models.yaml is malformed; the message names the file, line and key."""


class Cancelled(SdcomposeError):
    """The request was cancelled; nothing it loaded stays applied."""


class Unavailable(SdcomposeError):
    """The server cannot run the request now (a worker stopped under it); the same request may work again."""


class OutOfMemory(SdcomposeError):
    """The device ran out of memory; what the request held was freed."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters ('' when it has none).

    For a plugin's one-sentence errors about an exception it caught."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def describe(exc: BaseException, limit: int = 300) -> str:
    """``TypeName: first line of the message``, for a one-sentence error about a caught exception."""
    return f"{type(exc).__name__}: {first_line(exc, limit)}"


def quote(value: object, limit: int = 80) -> str:
    """repr of a user's value cut to ``limit`` characters, so a huge input cannot flood an error message."""
    try:
        text = repr(value)
    except Exception:  # an int past Python's digit limit, or a broken __repr__
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= limit else text[:limit - 3] + "..."


CPU_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory")  # torch's CPU allocator (Linux, Windows)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory: CUDA's OutOfMemoryError, or on the CPU a
    MemoryError or the RuntimeError torch's CPU allocator raises."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in CPU_OUT_OF_MEMORY)


def suggest(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


__all__ = ["SdcomposeError", "ValidationError", "ModelError", "CatalogError", "Cancelled",
           "OutOfMemory", "Unavailable", "PluginError", "describe", "first_line", "is_out_of_memory", "quote", "suggest"]
