"""Head parameters as text (``--C 0.01,0.1``, ``--param hidden_sizes=512:256``) -> values and grids to sweep."""
from __future__ import annotations

import inspect
from typing import Callable

from featcache.errors import HeadError
from featcache.train.heads import HEADS


def _param_defaults() -> dict[str, object]:
    """Parameter name -> its default in the first registered head that has it."""
    out: dict[str, object] = {}
    for name in sorted(HEADS):
        for n, p in inspect.signature(HEADS[name].__init__).parameters.items():
            if n != "self" and p.default is not inspect.Parameter.empty:
                out.setdefault(n, p.default)
    return out


def _example(name: str, default: object) -> str:
    """Examples of values for ``name``, from its default value."""
    if isinstance(default, tuple):
        return f"{name}=512 or {name}=512:256, or a comma list to sweep, e.g. {name}=256,512:256"
    if isinstance(default, bool):
        return f"{name}=true, or a comma list to sweep, e.g. {name}=true,false"
    if isinstance(default, (int, float)):
        return f"{name}={default}, or a comma list to sweep, e.g. {name}={default},{default * 10}"
    one = default if isinstance(default, str) else "VALUE"
    return f"{name}={one}, or a comma list to sweep, e.g. {name}={one},OTHER"


def parse_grid(options: dict[str, str | None], label: Callable[[str], str] = str) -> dict[str, list]:
    """``{"C": "0.01,0.1,1"}`` -> ``{"C": [0.01, 0.1, 1.0]}`` (ints, floats, bools, strings, tuples a:b).

    ``None`` means "not given" and is skipped. A value that is empty, or a comma list with an
    empty item, is a :class:`HeadError`. Tuple parameters (``hidden_sizes``) take positive
    whole numbers joined by ``:`` (``512`` or ``512:256``) and always parse to tuples; other
    values containing ``:`` that are not all whole numbers stay strings (``device=cuda:1``).
    ``label(name)`` says in messages how the caller set parameter ``name`` (the CLI: its flag).
    """
    defaults = _param_defaults()
    tuple_params = {n for n, d in defaults.items() if isinstance(d, tuple)}

    def sizes(name: str, item: str, text: str) -> tuple:
        parts = item.split(":")
        for part in parts:
            if not (part.strip().isdigit() and int(part) >= 1):
                raise HeadError(
                    f"{label(name)} {text!r}: {part.strip()!r} is not a positive whole number; expected "
                    f"layer widths joined by ':', e.g. {_example(name, ())}; fix the value")
        return tuple(int(part) for part in parts)

    def value(name: str, item: str, text: str):
        item = item.strip()
        if name in tuple_params:
            return sizes(name, item, text)
        if ":" in item:  # a tuple of whole numbers, e.g. 512:256
            parts = item.split(":")
            if all(p.strip().lstrip("-").isdigit() for p in parts):
                return tuple(int(p) for p in parts)
        for cast in (int, float):
            try:
                return cast(item)
            except ValueError:
                pass
        return {"true": True, "false": False}.get(item.lower(), item)

    out = {}
    for name, text in options.items():
        if text is None:
            continue
        if not str(text).strip():
            raise HeadError(f"{label(name)} is empty; expected a value, e.g. "
                            f"{_example(name, defaults.get(name))}; give a value or leave the option out")
        items = str(text).split(",")
        if any(not item.strip() for item in items):
            raise HeadError(f"{label(name)} {text!r} has an empty item; expected values separated by single "
                            f"commas, e.g. {_example(name, defaults.get(name)).split(', e.g. ')[-1]}; "
                            "remove the extra comma")
        out[name] = [value(name, item, str(text)) for item in items]
    return out


def params_and_grid(options: dict[str, str | None], label: Callable[[str], str] = str) -> tuple[dict, dict]:
    """Parsed ``options`` (see :func:`parse_grid`) split into fixed parameters and a grid to sweep."""
    parsed = parse_grid(options, label)
    return ({k: v[0] for k, v in parsed.items() if len(v) == 1}, {k: v for k, v in parsed.items() if len(v) > 1})
