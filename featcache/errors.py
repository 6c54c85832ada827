"""The library's exceptions. Raised once in the library, rendered once by the CLI.

Every message names the bad value, says what was expected and how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class FeatcacheError(Exception):
    """Base class: any error a user can fix. The CLI prints it as one `Error:` line."""


class UnknownNameError(FeatcacheError, KeyError):
    """A name (backbone, layer, head, weights, ...) that is not registered."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = ""):
        valid = sorted(valid)
        self.kind, self.name, self.valid = kind, name, valid
        close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        elif not valid:
            msg += "; there are none"
        elif len(valid) <= 12:
            msg += f"; expected one of: {', '.join(valid)}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class DataError(FeatcacheError):
    """The data source is missing, empty or malformed."""


class WeightsError(FeatcacheError):
    """Weights cannot be obtained or do not fit the architecture."""


class StoreError(FeatcacheError):
    """The feature store is unreadable, of another format, or inconsistent."""


class ImageDecodeError(FeatcacheError):
    """One image file cannot be decoded (policy --on-error decides what follows)."""


class HeadError(FeatcacheError):
    """A head cannot be fitted, loaded or applied."""


class EvaluationError(FeatcacheError, ValueError):
    """A bad argument to an evaluation function (fractions, grid, shapes, sort key, log path)."""


class Interrupted(FeatcacheError):
    """Ctrl-C during extraction: what was computed is saved; the same command resumes."""
