"""Builders shared by the classifier, score and filter tests.

The documents are real: the demo corpus (the interpreter's own .py files, read by the real ingest code).
The LABELS ARE A STAND-IN: ``classifiers.standin`` scores each file with a transparent docstring/comment
heuristic instead of an LLM (rows say ``engine = "heuristic-standin"``), so these tests exercise training,
scoring and filtering on real text without an LLM run.  The one test on real LLM annotations lives in
``tests/classifiers/test_llm_annotations.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pyarrow as pa

from classifiers.standin import standin_annotations
from factory.config import PipelineConfig, build_config
from factory.pipeline import StageContext
from factory.stages.ingest import Ingest, plan
from factory.store import BASE_SCHEMA, Store, Version

# minilm at 64 tokens keeps the suite fast; the benchmark uses the shipped 256
FAST_CLASSIFIER = {"featurizer": "minilm", "model": "random_forest", "max_tokens": 64, "n_estimators": 60, "min_rows": 20}


@functools.lru_cache(maxsize=None)
def demo_table(n_files: int) -> pa.Table:
    """Real demo-corpus documents (ingest's own reader, no Ray), in id order."""
    cfg = build_config({"ingest": {"demo_max_files": n_files, "rows_per_shard": 1000}}).ingest
    tables = [Ingest(cfg).read_task(t).table for t in plan(cfg)]
    t = pa.concat_tables(tables) if tables else BASE_SCHEMA.empty_table()
    return t.sort_by("id")


@functools.lru_cache(maxsize=None)
def annotated_sample(n_files: int) -> pa.Table:
    """Stand-in annotations (heuristic labels, see module docstring) of real demo-corpus documents."""
    return standin_annotations(demo_table(n_files))


def write_version(store: Store, vid: str, kind: str, table: pa.Table, rows_per_shard: int, parent: str | None = None) -> Version:
    w = store.begin(vid, {"kind": kind, "stage": "test-fixture", "parent": parent, "inputs": {}})
    n = table.num_rows
    for i, start in enumerate(range(0, max(n, 1), rows_per_shard)):
        part = table.slice(start, rows_per_shard)
        w.write_shard(f"part-{i:05d}", part, {"in": part.num_rows, "out": part.num_rows, "dropped": {}, "quarantined": {}})
    return w.commit({"in": n, "out": n, "dropped": {}, "quarantined": {}}, schema=table.schema)


def config(root: Path, classifier: dict | None = None, filt: dict | None = None) -> PipelineConfig:
    return build_config(
        {
            "output_root": str(root),
            "stages": ["ingest", "train_classifier", "score", "filter"],
            "ray": {"num_cpus": 2},
            "classifier": {**FAST_CLASSIFIER, **(classifier or {})},
            "filter": filt or {},
        }
    )


def ctx_for(cfg: PipelineConfig, store: Store, stage: str, **latest: Version) -> StageContext:
    return StageContext(cfg, store, stage, dict(latest), [], progress=False)
