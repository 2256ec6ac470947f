"""Unlearning methods, one module each, behind one registry: `unlearn.method` -> Method."""

from __future__ import annotations

from components.methods import decouple, finetune
from components.methods.base import Method, UnlearnData

METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (decouple, finetune)}


def get_method(name: str) -> Method:
    """The registered method called `name`; a clear error lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearn.method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "UnlearnData", "get_method"]
