"""Synthesize end to end with the embedded SmolLM2-135M (llama.cpp) in a Ray actor pool: the parent's rows pass
through unchanged, the kept generations are appended with their provenance, every generation is audited, the
counts reconcile, a rerun is a cache hit and a fresh store with the same response cache sends nothing.

A 135M model rarely writes an exercise whose tests pass, so this checks the plumbing on real replies, not
their quality (the verdicts themselves are tested on written replies in tests/stages/test_synthesize.py)."""

from __future__ import annotations

import json

import pytest

from factory.config import build_config
from factory.pipeline import run_pipeline
from factory.prompts import load_template
from factory.store import check_counts

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

BOOKS, EXERCISES = 2, 2


def _cfg(root, cache):
    return build_config(
        {
            "output_root": str(root),
            "stages": ["ingest", "synthesize"],
            "ingest": {"demo_max_files": 30, "rows_per_shard": 15},
            "engine": {"kind": "local", "cache_dir": str(cache), "num_workers": 1, "n_ctx": 1024},
            "synthesize": {"textbooks": BOOKS, "exercises": EXERCISES, "max_tokens": 96, "min_chars": 40,
                           "rows_per_shard": 3, "snippet_chars": 120},
        }
    )


def test_synthesize_with_the_local_engine(ray_local, tmp_path):
    cache = tmp_path / "cache"
    ingest, synth = run_pipeline(_cfg(tmp_path / "out", cache), progress=False)
    parent, v = ingest.version, synth.version
    assert not synth.cached and v.kind == "dataset" and v.parent == parent.id
    c = v.manifest["counts"]
    check_counts(c)
    n = BOOKS + EXERCISES
    assert c["in"] == parent.num_rows + n
    gens = v.read_table("generations").to_pylist()
    assert len(gens) == n and sorted(g["kind"] for g in gens) == ["exercise"] * EXERCISES + ["textbook"] * BOOKS
    kept = [g for g in gens if g["status"] == "kept"]
    assert c["out"] == parent.num_rows + len(kept)
    assert sum(c["dropped"].values()) == n - len(kept)
    templates = {k: load_template(f"synthesize/{k}") for k in ("textbook", "exercise")}
    for g in gens:
        assert g["raw_reply"] and g["completion_tokens"] > 0  # a real reply for every generation
        assert g["template_hash"] == templates[g["kind"]].hash
        assert json.loads(g["engine"])["model"] == "SmolLM2-135M-Instruct"
        if g["kind"] == "textbook":
            assert json.loads(g["recipe"])["topic"] in g["prompt"]
    rows = v.read().to_pylist()
    synthetic = [r for r in rows if r["source"].startswith("synthetic/")]
    assert sorted(r["id"] for r in synthetic) == sorted(g["id"] for g in kept)
    # the parent's rows pass through unchanged
    assert sorted((r["id"], r["text"]) for r in rows if not r["source"].startswith("synthetic/")) == sorted(
        (r["id"], r["text"]) for r in parent.read().to_pylist()
    )
    stats = v.manifest["synthesize_stats"]
    assert stats["new_requests"] == n and stats["cached_responses"] == 0
    assert v.manifest["templates"]["exercise"]["hash"] == templates["exercise"].hash

    again = run_pipeline(_cfg(tmp_path / "out", cache), progress=False)
    assert again[1].cached and again[1].version.id == v.id
    # a fresh store, the same response cache: the same version, zero model calls
    fresh = run_pipeline(_cfg(tmp_path / "out2", cache), progress=False)[1].version
    assert fresh.id == v.id and fresh.manifest["synthesize_stats"]["new_requests"] == 0
    assert fresh.read_table("generations").column("raw_reply").to_pylist() == [g["raw_reply"] for g in gens]
