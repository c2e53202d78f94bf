import json

import pyarrow as pa
import pytest

from factory.store import BASE_SCHEMA, CountsMismatch, Store, version_id


def rows(n, prefix="d"):
    return pa.Table.from_pylist(
        [{"id": f"{prefix}{i}", "text": f"text {i}", "source": "s", "meta": "{}"} for i in range(n)], schema=BASE_SCHEMA
    )


def test_version_id_is_deterministic_and_sensitive():
    a = version_id("p", "ingest", {"x": 1, "y": [1, 2]})
    assert a == version_id("p", "ingest", {"y": [1, 2], "x": 1})  # key order does not matter
    assert a != version_id("p", "ingest", {"x": 2, "y": [1, 2]})
    assert a != version_id("q", "ingest", {"x": 1, "y": [1, 2]})
    assert a != version_id("p", "near_dedup", {"x": 1, "y": [1, 2]})


def test_commit_is_atomic_and_manifest_complete(tmp_path):
    store = Store(tmp_path)
    w = store.begin("v1", {"kind": "dataset", "stage": "ingest", "parent": None})
    w.write_shard("part-00000", rows(3), {"in": 3, "out": 3, "dropped": {}, "quarantined": {}})
    assert not store.exists("v1")  # staged, not a version yet
    assert store.staging() == ["v1"]
    v = w.commit({"in": 3, "out": 3, "dropped": {}, "quarantined": {}}, schema=BASE_SCHEMA)
    assert store.exists("v1") and store.staging() == []
    m = json.loads((v.path / "manifest.json").read_text())
    assert m["counts"]["out"] == 3 and m["schema"][0] == ["id", "string"]
    assert "data/part-00000.parquet" in m["files"] and m["files"]["data/part-00000.parquet"]["rows"] == 3
    assert {"code_version", "started_at", "finished_at", "stage", "parent"} <= set(m)
    assert v.verify() == []
    (v.path / "data/part-00000.parquet").write_bytes(b"tampered")
    assert v.verify() == ["data/part-00000.parquet: checksum differs"]


def test_counts_must_reconcile(tmp_path):
    w = Store(tmp_path).begin("v", {"kind": "dataset", "stage": "x", "parent": None})
    with pytest.raises(CountsMismatch):
        w.commit({"in": 5, "out": 3, "dropped": {"near_duplicate": 1}, "quarantined": {}})


def test_completion_markers_resume(tmp_path):
    store = Store(tmp_path)
    w = store.begin("v", {"kind": "dataset", "stage": "x", "parent": None})
    w.write_shard("part-00000", rows(2), {"in": 2, "out": 2})
    w2 = store.begin("v", {"kind": "dataset", "stage": "x", "parent": None})  # a new process resumes
    assert w2.shard_done("part-00000") and not w2.shard_done("part-00001")


def test_lineage_diff_and_prefix_resolution(tmp_path):
    store = Store(tmp_path)
    w = store.begin("ingest-aaa", {"kind": "dataset", "stage": "ingest", "parent": None})
    w.write_shard("p0", rows(4), {"in": 4, "out": 4})
    w.commit({"in": 4, "out": 4, "dropped": {}, "quarantined": {}})
    w = store.begin("near_dedup-bbb", {"kind": "dataset", "stage": "near_dedup", "parent": "ingest-aaa"})
    w.write_shard("p0", rows(3), {"in": 4, "out": 3})
    w.commit({"in": 4, "out": 3, "dropped": {"near_duplicate": 1}, "quarantined": {}})
    assert [v.id for v in store.lineage("bbb")] == ["near_dedup-bbb", "ingest-aaa"]
    d = store.diff("ingest-aaa", "near_dedup-bbb")
    assert d["only_in_a"] == 1 and d["in_both"] == 3 and d["only_in_b"] == 0
    assert store.resolve("near") == "near_dedup-bbb"
