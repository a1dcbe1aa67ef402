"""The one registry of algorithm families. Models register with ``@register``; the CLI and reports enumerate it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from iosim.errors import IosimError


@dataclass(frozen=True)
class Algorithm:
    """name: CLI name; build(problem, config, hardware) -> Schedule; summary: one line for listings."""

    name: str
    build: Callable
    summary: str


_ALGORITHMS: dict[str, Algorithm] = {}


def register(name: str, summary: str):
    """Decorator for a schedule builder ``build(problem, config, hardware) -> Schedule``; duplicates are refused."""

    def deco(fn: Callable) -> Callable:
        if name in _ALGORITHMS:
            raise RuntimeError(f"algorithm {name!r} registered twice ({_ALGORITHMS[name].build.__module__}, {fn.__module__})")
        _ALGORITHMS[name] = Algorithm(name, fn, summary)
        return fn

    return deco


def _load() -> None:
    importlib.import_module("iosim.models")


def algorithms() -> dict[str, Algorithm]:
    _load()
    return dict(sorted(_ALGORITHMS.items()))


def get(name: str) -> Algorithm:
    algs = algorithms()
    if name not in algs:
        raise IosimError(f"unknown algorithm {name!r}; known: {', '.join(algs)}")
    return algs[name]
