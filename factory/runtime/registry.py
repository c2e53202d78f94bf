"""Stage runners by name.  A runner wires one stage family's pure code to Ray and the store."""

from __future__ import annotations

from typing import Callable

RUNNERS: dict[str, Callable] = {}


def runner(name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        RUNNERS[name] = fn
        return fn

    return deco


def load_runners() -> dict[str, Callable]:
    # importing a module registers its runners; one line per stage family
    from factory.runtime import run_ingest  # noqa: F401

    for optional in ("run_dedup", "run_annotate", "run_classify", "run_synthesize", "run_decontaminate", "run_probe"):
        try:
            __import__(f"factory.runtime.{optional}")
        except ModuleNotFoundError as e:
            if e.name != f"factory.runtime.{optional}":
                raise
    return RUNNERS
