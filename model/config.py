"""Strict construction of config dataclasses from JSON / YAML mappings, and their value checks.

A field's type comes from its annotation (bool, int, float, str, dict, tuple[float, float]); what
values it may take comes from a `Rule`, declared with the field (`field(default=8,
metadata=rule(ge=1))`). A bad value is one
ValueError line naming the key and what is allowed, e.g. `train.batch_size must be an integer
>= 1, got 0`, which the CLI prints as its exit-2 error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Rule:
    """Allowed values of one field, beyond its type. Bounds apply to numbers, the rest to str."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""  # a str must match all of it
    means: str = ""  # `pattern` in words, for the message

    def describe(self, noun: str) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.pattern:
            return self.means or f"a string matching {self.pattern}"
        lo = (">=", self.ge) if self.ge is not None else (">", self.gt)
        hi = ("<=", self.le) if self.le is not None else ("<", self.lt)
        if lo[1] is not None and hi[1] is not None:
            left, right = "[" if lo[0] == ">=" else "(", "]" if hi[0] == "<=" else ")"
            return f"{noun} in {left}{_num(lo[1])}, {_num(hi[1])}{right}"
        op, bound = lo if lo[1] is not None else hi
        return f"{noun} {op} {_num(bound)}" if bound is not None else noun

    def allows(self, value: Any) -> bool:
        if isinstance(value, str):
            if self.choices:
                return value in self.choices
            return not self.pattern or re.fullmatch(self.pattern, value) is not None
        if not isinstance(value, int | float):
            return True
        # Written as "not within" so that NaN fails every bound.
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )


def rule(**kwargs) -> dict:
    """Field metadata carrying a Rule: `x: int = field(default=8, metadata=rule(ge=1))`."""
    return {"rule": Rule(**kwargs)}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML / JSON (true, "fast", [1, 2])."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_NOUNS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
}


def _typed(key: str, tp: Any, value: Any, r: Rule) -> Any:
    """value checked against type tp and rule r; ints become floats where tp is float."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:  # a fixed-length list of numbers, e.g. value_range
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ValueError(f"{key} must be a list of {len(args)} numbers, got {_show(value)}")
        items = zip(args, value, strict=True)
        return tuple(_typed(f"{key}[{i}]", t, v, Rule()) for i, (t, v) in enumerate(items))
    noun, raw = _NOUNS.get(tp), value  # raw: the message shows what the user wrote
    if noun is None:  # a type this checker has no opinion on
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:  # bool is an int in Python, never in a params file
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:  # YAML ints are fine where a float is wanted
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok or not r.allows(value):
        raise ValueError(f"{key} must be {r.describe(noun)}, got {_show(raw)}")
    return value


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, section: str) -> None:
    """Check (and for floats, normalise) every field of dataclass instance `obj` against its
    type and its rule; call it from __post_init__. `section` prefixes the key in messages (the
    params.yaml section)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        r = f.metadata.get("rule") or Rule()
        value = _typed(f"{section}.{f.name}", hints[f.name], getattr(obj, f.name), r)
        object.__setattr__(obj, f.name, value)  # frozen dataclasses too


def strict_from_dict(cls: type[T], d: dict, what: str) -> T:
    """cls(**d), refusing keys cls does not have (a typo in params must not pass silently) and
    naming required keys that are missing."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(
            f"unknown {what} keys {sorted(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in d:
            raise ValueError(f"{what}.{name} is missing")
    return cls(**d)
