"""Unlearning methods, one module each, behind one registry: `unlearn.method` -> Method."""

from __future__ import annotations

from components.methods import (
    decouple,
    finetune,
    gradient_ascent,
    li2024,
    neggrad_plus,
    random_encoder,
    retain_label,
    retrain,
    salun,
    scrub,
)
from components.methods.base import Method, UnlearnData

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        decouple.METHOD, decouple.LITERAL, li2024.METHOD, gradient_ascent.METHOD,
        neggrad_plus.METHOD, random_encoder.METHOD, retain_label.METHOD, finetune.METHOD,
        salun.METHOD, scrub.METHOD, retrain.METHOD,
    )
}


def get_method(name: str) -> Method:
    """The registered method called `name`; a clear error lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearn.method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "UnlearnData", "get_method"]
