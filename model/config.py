"""Strict construction of config dataclasses from JSON / YAML mappings."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: dict, what: str) -> T:
    """cls(**d), refusing keys cls does not have: a typo in params must not pass silently."""
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    return cls(**d)
