"""decontaminate through the pipeline and its runner on a real local Ray: real stdlib files with planted
HumanEval copies, ingested into several shards; the committed version, its side table, counts, the cache and
the version id's dependence on the config."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from factory.config import build_config
from factory.pipeline import run_pipeline
from factory.runtime.run_decontaminate import run_decontaminate
from factory.stages.decontaminate import load_benchmark
from factory.store import BASE_SCHEMA, Store, check_counts
from tests.classifiers.helpers import ctx_for, write_version

pytestmark = pytest.mark.ray

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PROBLEM = {p["task_id"]: p for p in load_benchmark("humaneval").problems}
STRLEN = 'def strlen(s):\n    """Return length of given string."""\n    return sum(1 for _ in s)\n'


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """40 real stdlib modules plus a module hiding HumanEval/0 (re-indented) and one with strlen's signature."""
    root = tmp_path_factory.mktemp("corpus")
    files = [p for p in sorted(STDLIB.glob("*.py")) if 1000 < p.stat().st_size < 40000][:40]
    for f in files:
        shutil.copy(f, root / f.name)
    p = PROBLEM["HumanEval/0"]
    copy = (p["prompt"] + p["canonical_solution"]).replace("    ", "  ")
    (root / "zz_close.py").write_text("import math\n\n" + copy + "\n\nprint(has_close_elements([1.0], 0.1))\n")
    (root / "zz_strlen.py").write_text(STRLEN)
    return root


def _cfg(out: Path, corpus: Path, **decon):
    return build_config(
        {
            "output_root": str(out),
            "stages": ["ingest", "decontaminate"],
            "ray": {"num_cpus": 2},
            "ingest": {"inputs": [{"path": str(corpus), "extensions": [".py"]}], "rows_per_shard": 10},
            "decontaminate": decon,
        }
    )


def test_pipeline_drops_planted_copies_and_caches(ray_local, corpus, tmp_path):
    cfg = _cfg(tmp_path / "store", corpus)
    ing, dec = (r.version for r in run_pipeline(cfg, progress=False))
    assert len(ing.data_files()) == 5  # 42 rows in shards of 10: the stage runs one task per shard

    assert dec.kind == "dataset" and dec.stage == "decontaminate" and dec.parent == ing.id
    counts = dec.manifest["counts"]
    check_counts(counts)
    assert counts == {"in": 42, "out": 40, "dropped": {"benchmark_overlap": 1, "benchmark_signature": 1}, "quarantined": {}}
    side = {Path(json.loads(r["meta"])["path"]).name: r for r in dec.read_table("contaminated").to_pylist()}
    assert sorted(side) == ["zz_close.py", "zz_strlen.py"]
    assert side["zz_close.py"]["task_ids"][0] == "HumanEval/0" and side["zz_close.py"]["matched_ngrams"] > 20
    assert side["zz_strlen.py"]["task_ids"] == ["HumanEval/23"]
    assert side["zz_strlen.py"]["text"] == STRLEN  # the whole row is kept for the audit

    kept = dec.read()
    assert kept.schema.equals(ing.read().schema) and kept.num_rows == 40
    assert sorted(kept.column("id").to_pylist() + [r["id"] for r in side.values()]) == sorted(ing.read(["id"]).column("id").to_pylist())
    assert not dec.verify()

    bench = dec.manifest["decontamination"]
    he = load_benchmark("humaneval")
    assert bench["benchmarks"] == [he.describe()] and bench["benchmarks"][0]["problems"] == 164
    assert bench["ngram"] == 13 and bench["ngrams"] > 10_000 and bench["signatures"] > 150
    assert dec.manifest["stage_config"]["ngram"] == 13

    again = {r.stage: r for r in run_pipeline(cfg, progress=False)}["decontaminate"]
    assert again.cached and again.version.id == dec.id

    other = {r.stage: r for r in run_pipeline(_cfg(tmp_path / "store", corpus, ngram=10), progress=False)}["decontaminate"]
    assert not other.cached and other.version.id != dec.id and other.version.parent == ing.id


def test_version_id_follows_the_benchmark_file(ray_local, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    cfg = _cfg(tmp_path / "store", tmp_path)
    ds = write_version(store, "dataset-fixture", "dataset", BASE_SCHEMA.empty_table(), rows_per_shard=10)
    first, _ = run_decontaminate(ctx_for(cfg, store, "decontaminate", dataset=ds))

    from factory.stages import decontaminate as dc

    _, problems = dc.LOADERS["humaneval"]()
    edited = tmp_path / "HumanEval.jsonl"
    edited.write_text("\n".join(json.dumps(p) for p in problems[:-1]) + "\n")
    monkeypatch.setitem(dc.LOADERS, "humaneval", lambda: (edited, problems[:-1]))
    second, cached = run_decontaminate(ctx_for(cfg, store, "decontaminate", dataset=ds))
    assert not cached and second.id != first.id
    assert second.manifest["decontamination"]["benchmarks"][0]["problems"] == 163


@pytest.mark.parametrize("shards", [0, 1])
def test_empty_input_version(ray_local, tmp_path, shards):
    store = Store(tmp_path / "store")
    cfg = _cfg(tmp_path / "store", tmp_path)
    zero = {"in": 0, "out": 0, "dropped": {}, "quarantined": {}}
    if shards:
        ds = write_version(store, "dataset-fixture", "dataset", BASE_SCHEMA.empty_table(), rows_per_shard=10)
    else:
        ds = store.begin("dataset-fixture", {"kind": "dataset", "stage": "test-fixture", "parent": None}).commit(zero, schema=BASE_SCHEMA)
    assert len(ds.data_files()) == shards
    v, cached = run_decontaminate(ctx_for(cfg, store, "decontaminate", dataset=ds))
    assert not cached and v.manifest["counts"] == zero and v.parent == ds.id
    assert len(v.data_files()) == shards and v.read_table("contaminated").num_rows == 0
