"""The annotate stage end to end with the embedded llama.cpp engine in a Ray Data actor pool: ingest a small
sample of the demo corpus, annotate it with the real SmolLM2-135M, check the annotations version, then show
that a rerun is a version cache hit and a fresh store with the same response cache makes zero model calls."""

from __future__ import annotations

import json

import pytest

from factory.config import build_config
from factory.engines.cache import count_lines
from factory.pipeline import run_pipeline
from factory.prompts import load_template
from factory.stages.annotate import ANNOTATION_SCHEMA
from factory.store import check_counts

pytestmark = pytest.mark.ray

N = 4


def _cfg(root, cache, template="annotate/phi1_code"):
    return build_config(
        {
            "output_root": str(root),
            "stages": ["ingest", "annotate"],
            "ingest": {"demo_max_files": 40, "rows_per_shard": 20},
            "engine": {"kind": "local", "cache_dir": str(cache), "num_workers": 1, "n_ctx": 1024},
            "annotate": {"template": template, "sample_size": N, "max_doc_chars": 200, "max_tokens": 4, "batch_size": 2},
        }
    )


def test_local_engine_end_to_end(ray_local, tmp_path):
    cache = tmp_path / "cache"
    runs = run_pipeline(_cfg(tmp_path / "out", cache), progress=False)
    ingest, annotate = runs
    v = annotate.version
    assert not annotate.cached
    assert v.kind == "annotations" and v.parent == ingest.version.id
    check_counts(v.manifest["counts"])
    t = v.read()
    assert t.schema.names == ANNOTATION_SCHEMA.names and t.num_rows == N
    assert len(set(t.column("id").to_pylist())) == N
    rows = t.to_pylist()
    # stratified by source: every source of the ingested demo files is in the sample (stdlib and
    # site-packages wherever the 40 hash-ranked files include both, as they do with this project's packages)
    assert {r["source"] for r in rows} == set(ingest.version.read(["source"]).column("source").to_pylist())
    tpl = load_template("annotate/phi1_code")
    for r in rows:
        assert r["parse_status"] == "ok", r["raw_reply"]  # constrained output: always a score token
        assert r["score"] in {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
        assert r["expected_score"] is not None and 0.0 <= r["expected_score"] <= 5.0
        assert r["raw_reply"] == str(int(r["score"]))
        assert (r["engine"], r["model"]) == ("local", "SmolLM2-135M-Instruct")
        assert (r["template_id"], r["template_hash"]) == (tpl.id, tpl.hash)
        assert r["prompt_tokens"] > 50 and r["completion_tokens"] >= 1 and r["latency_s"] > 0
        json.loads(r["meta"])
    assert v.manifest["parse_status"] == {"ok": N, "unparsed": 0, "error": 0}
    assert v.manifest["engine"]["identity"]["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert v.manifest["template"]["hash"] == tpl.hash
    assert len(count_lines(cache)) == N  # written by the actor, one line per reply

    # the same pipeline again: the annotations version is a cache hit
    again = run_pipeline(_cfg(tmp_path / "out", cache), progress=False)
    assert again[1].cached and again[1].version.id == v.id

    # a fresh store with the same response cache: same version id, zero model calls
    fresh = run_pipeline(_cfg(tmp_path / "out2", cache), progress=False)
    assert not fresh[1].cached and fresh[1].version.id == v.id
    assert fresh[1].version.manifest["annotate_stats"]["new_requests"] == 0

    # another template: another version id over the same dataset
    other = run_pipeline(_cfg(tmp_path / "out", cache, "annotate/fineweb_edu"), progress=False)
    assert other[1].version.id != v.id and other[1].version.parent == ingest.version.id
    assert set(other[1].version.read().column("template_id").to_pylist()) == {"annotate/fineweb_edu@1"}
