"""Ingest over hostile inputs, without Ray: every bad input is a quarantine row with a reason."""

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.config import IngestConfig, InputSpec
from factory.stages.ingest import Ingest, demo_inputs, plan


def hostile_folder(root: Path) -> dict[str, str]:
    root.mkdir()
    (root / "good.py").write_text("def f():\n    return 1\n")
    (root / "latin1.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (root / "blob.py").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    (root / "empty.py").write_text("   \n")
    with open(root / "huge.py", "wb") as f:  # 50 MB, sparse so the test stays cheap
        f.truncate(50 * 2**20)
    (root / "vanishing.py").write_text("x = 1\n")
    return {"latin1.py": "undecodable", "blob.py": "binary", "empty.py": "empty", "huge.py": "oversized"}


def test_hostile_files_are_quarantined_with_reasons(tmp_path):
    expected = hostile_folder(tmp_path / "in")
    cfg = IngestConfig(inputs=[InputSpec(path=str(tmp_path / "in"), extensions=[".py"])], max_doc_bytes=10 * 2**20)
    tasks = plan(cfg)
    os.remove(tmp_path / "in" / "vanishing.py")  # between listing and reading
    expected["vanishing.py"] = "vanished"
    results = [Ingest(cfg).read_task(t) for t in tasks]
    quarantine = pa.concat_tables([r.side["quarantine"] for r in results]).to_pylist()
    got = {Path(q["source"]).name: q["reason"] for q in quarantine}
    assert got == expected
    out = pa.concat_tables([r.table for r in results])
    assert out.column("text").to_pylist() == ["def f():\n    return 1\n"]
    total_in = sum(r.counts["in"] for r in results)
    assert total_in == 6 == out.num_rows + len(quarantine)
    meta = json.loads(out.column("meta")[0].as_py())
    assert meta["path"].endswith("good.py")


def test_jsonl_malformed_lines_and_fields(tmp_path):
    p = tmp_path / "docs.jsonl"
    lines = [
        json.dumps({"text": "a good document", "lang": "en"}),
        '{"text": "truncated',
        json.dumps(["not", "an", "object"]),
        json.dumps({"body": "no text field"}),
        json.dumps({"text": ""}),
        "",
        json.dumps({"text": "another good one", "id": "custom-7"}),
    ]
    p.write_text("\n".join(lines) + "\n")
    cfg = IngestConfig(inputs=[InputSpec(path=str(p), id_field="id")])
    (r,) = [Ingest(cfg).read_task(t) for t in plan(cfg)]
    q = r.side["quarantine"].to_pylist()
    assert [(x["position"], x["reason"]) for x in q] == [
        (2, "malformed_json"),
        (3, "not_an_object"),
        (4, "missing_text"),
        (5, "empty"),
    ]
    assert r.table.column("id").to_pylist()[1] == "custom-7"
    assert json.loads(r.table.column("meta")[0].as_py())["lang"] == "en"
    assert r.counts == {"in": 6, "out": 2, "dropped": {}, "quarantined": dict(r.quarantined)}


def test_truncated_and_wrong_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["x = 1", None, "y = 2"], "lang": ["py", "py", "py"]}), good)
    data = good.read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    pq.write_table(pa.table({"content": ["no text column"]}), tmp_path / "wrongcol.parquet")
    cfg = IngestConfig(inputs=[InputSpec(path=str(tmp_path), format="parquet", glob="*.parquet")])
    results = {Path(t.paths[0]).name: Ingest(cfg).read_task(t) for t in plan(cfg)}
    assert results["good.parquet"].table.column("text").to_pylist() == ["x = 1", "y = 2"]
    assert results["good.parquet"].side["quarantine"].column("reason").to_pylist() == ["missing_text"]
    assert results["truncated.parquet"].side["quarantine"].column("reason").to_pylist() == ["corrupt_parquet"]
    assert results["wrongcol.parquet"].side["quarantine"].column("reason").to_pylist() == ["missing_text_column"]


def test_ids_are_stable_and_content_derived(tmp_path):
    (tmp_path / "a.py").write_text("print(1)\n")
    cfg = IngestConfig(inputs=[InputSpec(path=str(tmp_path))])
    first = Ingest(cfg).read_task(plan(cfg)[0]).table.column("id").to_pylist()
    assert first == Ingest(cfg).read_task(plan(cfg)[0]).table.column("id").to_pylist()
    (tmp_path / "a.py").write_text("print(2)\n")
    assert first != Ingest(cfg).read_task(plan(cfg)[0]).table.column("id").to_pylist()


def test_demo_corpus_is_the_interpreters_own_code():
    groups = dict(demo_inputs(IngestConfig(demo_max_files=200)))
    assert "stdlib" in groups
    files = [f for fs in groups.values() for f in fs]
    assert len(files) == 200 and all(f.endswith(".py") for f in files)
    assert groups["stdlib"] and all("site-packages" not in f for f in groups["stdlib"])
    assert demo_inputs(IngestConfig(demo_max_files=200)) == demo_inputs(IngestConfig(demo_max_files=200))


def _ingest_rows(cfg: IngestConfig) -> list[dict]:
    return pa.concat_tables([Ingest(cfg).read_task(t).table for t in plan(cfg)]).sort_by("id").to_pylist()


def test_ids_do_not_depend_on_where_the_corpus_lives(tmp_path):
    for where in ("a", "b/deeper"):
        d = tmp_path / where / "corpus"
        (d / "pkg").mkdir(parents=True)
        (d / "pkg" / "m.py").write_text("def f():\n    return 1\n")
        (d / "docs.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    rows_a = _ingest_rows(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "a" / "corpus"))]))
    rows_b = _ingest_rows(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "b/deeper" / "corpus"))]))
    assert len(rows_a) == 2 and [r["id"] for r in rows_a] == [r["id"] for r in rows_b]
    assert [json.loads(r["meta"])["path"] for r in rows_a] != [json.loads(r["meta"])["path"] for r in rows_b]
    # a different file name (same text) is a different document
    (tmp_path / "a" / "corpus" / "pkg" / "m.py").rename(tmp_path / "a" / "corpus" / "pkg" / "n.py")
    rows_c = _ingest_rows(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "a" / "corpus"))]))
    assert {r["id"] for r in rows_c} != {r["id"] for r in rows_a}


def test_two_inputs_with_the_same_folder_name_get_distinct_ids(tmp_path):
    for where in ("x", "y"):
        (tmp_path / where / "src").mkdir(parents=True)
        (tmp_path / where / "src" / "same.py").write_text("x = 1\n")
    cfg = IngestConfig(inputs=[InputSpec(path=str(tmp_path / w / "src")) for w in ("x", "y")])
    rows = _ingest_rows(cfg)
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2
    assert {r["source"] for r in rows} == {"src"}


def test_demo_ids_are_relative_to_the_interpreter_roots():
    cfg = IngestConfig(demo_max_files=30, rows_per_shard=1000)
    tasks = plan(cfg)
    names = [n for t in tasks for n in t.names]
    assert names and all(n.startswith(("stdlib/", "site-packages/")) for n in names)
    assert not any(os.path.isabs(n.split("/", 1)[1]) for n in names)
