"""Registry of heads by name: ``HEADS``, ``register_head``, ``get_head_class``, ``make_head``."""
from __future__ import annotations

import copy
import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

from featcache.errors import HeadError, UnknownNameError


class HeadRegistry(Mapping):
    """name -> head class. Names declared with :meth:`declare` (heads that need torch) are listed
    at once, but their module is imported only when the class is asked for, so the
    scikit-learn heads never pay for importing torch."""

    def __init__(self):
        self.classes: dict[str, type] = {}
        self.pending: dict[str, str] = {}  # name -> module that registers it when imported

    def declare(self, module: str, names: tuple[str, ...]) -> None:
        """``module`` registers ``names`` (with ``@register_head``) when it is imported."""
        for name in names:
            self.pending.setdefault(name, module)

    def register(self, name: str, cls: type) -> None:
        owner = self.classes.get(name)
        if owner is not None or self.pending.get(name, cls.__module__) != cls.__module__:
            by = owner.__name__ if owner is not None else self.pending[name]
            raise HeadError(
                f"head name {name!r} is already registered (by {by}); "
                f"expected a new name for {cls.__name__}; pick another name"
            )
        self.pending.pop(name, None)
        self.classes[name] = cls

    def __getitem__(self, name: str) -> type:
        if name not in self.classes and name in self.pending:
            importlib.import_module(self.pending[name])  # registers the class (and imports what it needs)
        return self.classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter([*self.classes, *(n for n in self.pending if n not in self.classes)])

    def __len__(self) -> int:
        return len(set(self.classes) | set(self.pending))

    def __contains__(self, name: object) -> bool:
        return name in self.classes or name in self.pending


#: name -> head class (filled by the ``@register_head`` decorators of the head modules).
HEADS = HeadRegistry()


def register_head(name: str) -> Callable[[type], type]:
    """Class decorator registering a head class under ``name``; a duplicate name raises."""

    def decorator(cls: type) -> type:
        HEADS.register(name, cls)
        cls.head_name = name
        return cls

    return decorator


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(HEADS)


def get_head_class(name: str) -> type:
    """The head class registered as ``name``; :class:`UnknownNameError` with close matches."""
    try:
        return HEADS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("head", name, HEADS) from None


def make_head(name: str, **params: Any):
    """A new unfitted head ``name`` with hyperparameters ``params``."""
    cls = get_head_class(name)
    valid = cls().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise HeadError(
            f"head {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
            f"expected some of: {', '.join(sorted(valid))}; fix the parameter names"
        )
    return cls(**params)


def check_head(name: str, params: dict | None = None, grid: dict | None = None) -> None:
    """Raise for an unknown head, an unknown parameter name, or a parameter value that cannot
    work, in ``params`` or among the values of ``grid`` (each checked with ``params``): reads
    no data, so callers check a head before extracting features for it."""
    params = dict(params or {})
    make_head(name, **params).check_params()
    for key, values in (grid or {}).items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            make_head(name, **{**params, key: value}).check_params()


def default_grid(name: str) -> dict[str, list]:
    """Default hyperparameter grid for a sweep of head ``name`` (a fresh copy)."""
    return copy.deepcopy(get_head_class(name)._default_grid)


def head_name(head: Any) -> str:
    """Registered name of a head instance (or class)."""
    cls = head if isinstance(head, type) else type(head)
    for name, registered in HEADS.classes.items():
        if registered is cls:
            return name
    raise HeadError(
        f"{cls.__name__} is not a registered head; expected an instance of one of "
        f"{', '.join(list_heads())}; register it with @register_head(name)"
    )
