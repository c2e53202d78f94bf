"""The annotate stage's pure logic: sampling, request building (cache keys), rows for every parse outcome."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest

from factory.config import AnnotateConfig
from factory.engines.base import ChatResponse
from factory.prompts import load_template
from factory.stages.annotate import ANNOTATION_SCHEMA, Annotator, allocate, sample_positions, sample_table, status_counts, truncate
from factory.store import check_counts

IDENT = {"kind": "local", "model": "SmolLM2-135M-Instruct", "file": "x.gguf", "bytes": 1}


def _table(n_a=60, n_b=30, n_c=10):
    ids, src = [], []
    for name, n in (("a", n_a), ("b", n_b), ("c", n_c)):
        for i in range(n):
            ids.append(f"{name}{i:04d}")
            src.append(name)
    return pa.table({"id": ids, "source": src})


def test_allocate_proportional_with_floor_of_one():
    assert allocate({"a": 60, "b": 30, "c": 10}, 10) == {"a": 6, "b": 3, "c": 1}
    alloc = allocate({"a": 1000, "b": 1, "c": 1}, 5)
    assert alloc == {"a": 3, "b": 1, "c": 1}
    assert sum(allocate({"a": 7, "b": 5, "c": 3}, 9).values()) == 9
    assert allocate({"a": 2, "b": 1}, 50) == {"a": 2, "b": 1}  # more asked than there is: everything


def test_sample_is_seeded_stratified_and_order_independent():
    t = _table()
    cfg = AnnotateConfig(sample_size=10, seed=3)
    pos = sample_table(t, cfg)
    ids = [t.column("id")[i].as_py() for i in pos]
    assert len(ids) == len(set(ids)) == 10
    assert Counter(i[0] for i in ids) == {"a": 6, "b": 3, "c": 1}
    # same rows shuffled: the same sample
    perm = list(reversed(range(t.num_rows)))
    t2 = t.take(pa.array(perm))
    ids2 = [t2.column("id")[i].as_py() for i in sample_table(t2, cfg)]
    assert ids2 == ids
    # another seed: another sample
    ids3 = [t.column("id")[i].as_py() for i in sample_table(t, AnnotateConfig(sample_size=10, seed=4))]
    assert ids3 != ids
    # unstratified
    pos = sample_positions(t.column("id").to_pylist(), None, 10, 0)
    assert len(set(pos)) == 10


def test_sample_needs_the_stratum_column():
    with pytest.raises(ValueError, match="stratify_by"):
        sample_table(pa.table({"id": ["a"]}), AnnotateConfig(stratify_by="lang"))


def test_truncate():
    assert truncate("abc", 100) == "abc"
    text = "\n".join(f"line {i}" for i in range(100))
    cut = truncate(text, 120)
    assert len(cut) <= 120 and cut.endswith("\n")
    assert truncate("x" * 500, 100) == "x" * 100
    assert truncate(None, 100) == ""


def _annot(**kw):
    return Annotator(AnnotateConfig(**kw), load_template("annotate/phi1_code"), IDENT)


DOC = {"id": "d1", "text": "print('hi')\n" * 400, "source": "stdlib", "meta": json.dumps({"path": "x.py"})}


def test_request_is_constrained_and_keyed():
    a = _annot(max_doc_chars=200)
    r = a.request(DOC)
    assert r.choices == [str(i) for i in range(6)] and r.json_schema is None and r.logprobs == 20
    assert len(r.messages[-1]["content"]) < 200 + 2000
    assert r.key == a.request(dict(DOC)).key
    # everything that changes a reply changes the key
    assert _annot(max_doc_chars=300).request(DOC).key != r.key  # the input
    assert _annot(max_doc_chars=200, temperature=0.7).request(DOC).key != r.key  # sampling
    assert _annot(max_doc_chars=200, output="json").request(DOC).key != r.key  # output constraint
    other = Annotator(AnnotateConfig(max_doc_chars=200), load_template("annotate/phi1_code"), {**IDENT, "model": "m2"})
    assert other.request(DOC).key != r.key  # the engine
    fw = Annotator(AnnotateConfig(max_doc_chars=200), load_template("annotate/fineweb_edu"), IDENT)
    assert fw.request(DOC).key != r.key  # the template
    j = _annot(output="json").request(DOC)
    assert j.choices is None and j.json_schema["required"] == ["score"] and j.logprobs == 0
    f = _annot(output="free").request(DOC)
    assert f.choices is None and f.json_schema is None


def test_rows_for_ok_unparsed_and_error():
    a = _annot()
    docs = [dict(DOC, id=f"d{i}") for i in range(4)]
    keys = [f"k{i}" for i in range(4)]
    responses = {
        "k0": ChatResponse(key="k0", text="4", prompt_tokens=100, completion_tokens=1, latency_s=0.5,
                           choice_probs={"3": 0.5, "4": 0.5}, expected=3.5),
        "k1": ChatResponse(key="k1", text="It's a binary file, sort of", prompt_tokens=90, completion_tokens=8),
        "k2": ChatResponse(key="k2", text=None, error="ValueError: prompt too long", error_kind="request"),
        # k3: no response at all
    }
    res = a.shard(docs, responses, keys)
    t = res.table
    assert t.schema == ANNOTATION_SCHEMA
    rows = t.to_pylist()
    assert [r["parse_status"] for r in rows] == ["ok", "unparsed", "error", "error"]
    assert rows[0]["score"] == 4.0 and rows[0]["expected_score"] == 3.5 and rows[0]["raw_reply"] == "4"
    assert rows[1]["score"] is None and rows[1]["raw_reply"].startswith("It's a binary")
    assert rows[2]["raw_reply"] is None and rows[2]["score"] is None
    assert {r["template_id"] for r in rows} == {"annotate/phi1_code@1"}
    assert {r["template_hash"] for r in rows} == {a.template.hash}
    assert {r["engine"] for r in rows} == {"local"} and rows[0]["meta"] == DOC["meta"]
    assert res.side["errors"].column("id").to_pylist() == ["d2", "d3"]
    check_counts(res.counts)
    assert res.counts["in"] == res.counts["out"] == 4
    assert status_counts(t) == {"ok": 1, "unparsed": 1, "error": 2}
