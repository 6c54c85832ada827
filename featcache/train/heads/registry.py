"""Registry of heads by name: ``HEADS``, ``register_head``, ``get_head_class``, ``make_head``."""
from __future__ import annotations

import copy
from typing import Any, Callable

from featcache.errors import HeadError, UnknownNameError

#: name -> head class (filled by the ``@register_head`` decorators of the head modules).
HEADS: dict[str, type] = {}


def register_head(name: str) -> Callable[[type], type]:
    """Class decorator registering a head class under ``name``; a duplicate name raises."""

    def decorator(cls: type) -> type:
        if name in HEADS:
            raise HeadError(
                f"head name {name!r} is already registered (by {HEADS[name].__name__}); "
                f"expected a new name for {cls.__name__}; pick another name"
            )
        HEADS[name] = cls
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


def default_grid(name: str) -> dict[str, list]:
    """Default hyperparameter grid for a sweep of head ``name`` (a fresh copy)."""
    return copy.deepcopy(get_head_class(name)._default_grid)


def head_name(head: Any) -> str:
    """Registered name of a head instance (or class)."""
    cls = head if isinstance(head, type) else type(head)
    for name, registered in HEADS.items():
        if registered is cls:
            return name
    raise HeadError(
        f"{cls.__name__} is not a registered head; expected an instance of one of "
        f"{', '.join(list_heads())}; register it with @register_head(name)"
    )
