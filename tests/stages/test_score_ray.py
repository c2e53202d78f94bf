"""train_classifier -> score -> filter through the runners, on a real local Ray and the store.

Real demo-corpus documents; annotations are the heuristic STAND-IN (tests/classifiers/helpers.py), written as
an annotations version the way the annotate stage writes one.  Scoring runs twice on the same inputs, with a
pool of 1 and of 2 actors and a cold embedding cache each time: the rows, their order, their shards and every
score must be identical.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from classifiers.models import QualityModel
from factory.runtime.run_classify import run_filter, run_score, run_train_classifier
from factory.store import Store, check_counts
from tests.classifiers.helpers import annotated_sample, config, ctx_for, demo_table, write_version

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def trained(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("store-a")
    store = Store(root)
    data = demo_table(200).slice(0, 70)
    ds = write_version(store, "dataset-fixture", "dataset", data, rows_per_shard=20)
    ann = write_version(store, "annotations-fixture", "annotations", annotated_sample(120), rows_per_shard=50, parent=ds.id)
    cfg = config(root)
    clf, cached = run_train_classifier(ctx_for(cfg, store, "train_classifier", dataset=ds, annotations=ann))
    assert not cached
    return store, cfg, ds, ann, clf


def test_train_classifier_runner_writes_a_classifier_version(trained):
    store, cfg, ds, ann, clf = trained
    assert clf.kind == "classifier" and clf.parent == ann.id and clf.manifest["inputs"] == {"annotations": ann.id}
    m = json.loads((clf.artifacts() / "metrics.json").read_text())
    n_ok = sum(1 for s in ann.read(["parse_status"]).column("parse_status").to_pylist() if s == "ok")
    assert clf.manifest["counts"] == {"in": n_ok, "out": n_ok, "dropped": {}, "quarantined": {}}
    assert m["rows_used"] == n_ok and m["training_size"] + m["validation_size"] == n_ok
    assert m["lineage"]["annotations_version"] == ann.id and m["lineage"]["classifier_version"] == clf.id
    assert m["lineage"]["annotators"] == [["heuristic-standin", "heuristic-standin"]]
    info = json.loads((clf.artifacts() / "model.json").read_text())
    assert info["config"]["featurizer"] == "minilm" and info["featurizer"]["id"] == m["featurizer"]
    assert clf.manifest["metrics"]["f1"] == m["f1"]
    assert not clf.verify()  # every artifact is checksummed in the manifest
    # the training embeddings landed in the store's cache
    assert any((store.root / "cache" / "embeddings").rglob("part-*.parquet"))
    again, cached = run_train_classifier(ctx_for(cfg, store, "train_classifier", annotations=ann))
    assert cached and again.id == clf.id


def _score(store, cfg, ds, clf, workers):
    cfg = cfg.model_copy(deep=True)
    cfg.filter.num_workers = workers
    cfg.filter.batch_size = 8
    v, cached = run_score(ctx_for(cfg, store, "score", dataset=ds, classifier=clf))
    assert not cached
    return v


def test_score_is_identical_with_1_and_2_workers(trained, tmp_path):
    store_a, cfg, ds, ann, clf = trained
    # a second store holding the same dataset and classifier versions, and no embedding cache
    root_b = tmp_path / "store-b"
    for v in (ds, clf):
        shutil.copytree(v.path, root_b / "versions" / v.id)
    store_b = Store(root_b)
    shutil.rmtree(store_a.root / "cache" / "embeddings")  # both runs embed every document themselves
    v1 = _score(store_a, cfg, ds, clf, workers=1)
    v2 = _score(store_b, cfg.model_copy(update={"output_root": str(root_b)}), store_b.get(ds.id), store_b.get(clf.id), workers=2)
    assert v1.id == v2.id  # worker count and batch size are not part of the version
    assert v1.manifest["inputs"] == {"classifier": clf.id} and v1.parent == ds.id
    check_counts(v1.manifest["counts"])
    assert v1.manifest["counts"]["in"] == v1.manifest["counts"]["out"] == ds.num_rows == 70
    # one output shard per input shard, same names, same rows in the same order
    assert [p.name for p in v1.data_files()] == [p.name for p in ds.data_files()] == [p.name for p in v2.data_files()]
    for fin, f1, f2 in zip(ds.data_files(), v1.data_files(), v2.data_files()):
        t_in, t1, t2 = pq.read_table(fin), pq.read_table(f1), pq.read_table(f2)
        assert t1.column("id").equals(t_in.column("id")) and t2.column("id").equals(t_in.column("id"))
        assert t1.equals(t2), f"{f1.name} differs between 1 and 2 workers"
    scored = v1.read()
    s = np.asarray(scored.column("quality_score"))
    assert set(scored.column("quality_model").to_pylist()) == {clf.id}
    assert ((s >= 0) & (s <= 1)).all() and len(np.unique(s)) > 10
    # what the actors computed is what the model says on the driver
    model = QualityModel.load(clf.artifacts())
    want = model.predict_texts(scored.column("text").to_pylist()[:20], model.make_featurizer(threads=1))
    np.testing.assert_allclose(s[:20], want, rtol=0, atol=1e-9)


def test_filter_runner_threshold_and_top_fraction(trained):
    store, cfg, ds, ann, clf = trained
    scored = store.get(next(v.id for v in store.list() if v.stage == "score"))
    s = np.asarray(scored.read(["quality_score"]).column("quality_score"))
    for rule, reason, n_keep in (
        ({"threshold": 0.5}, "below_threshold", int((s >= 0.5).sum())),
        ({"threshold": None, "top_fraction": 0.3}, "below_top_fraction", int(np.ceil(0.3 * len(s)))),
    ):
        c = cfg.model_copy(deep=True)
        c.filter = c.filter.model_validate(rule)
        v, cached = run_filter(ctx_for(c, store, "filter", dataset=scored, classifier=clf))
        assert not cached and v.parent == scored.id
        counts = v.manifest["counts"]
        check_counts(counts)
        assert counts["in"] == 70 and counts["out"] == n_keep
        assert counts["dropped"] == ({reason: 70 - n_keep} if n_keep < 70 else {})
        rejected = v.read_table("rejected")
        assert rejected.num_rows == 70 - n_keep and set(rejected.column("reason").to_pylist()) <= {reason}
        assert "quality_score" in rejected.column_names
        kept = v.read()
        assert sorted(kept.column("id").to_pylist() + rejected.column("id").to_pylist()) == sorted(scored.read(["id"]).column("id").to_pylist())
        if rejected.num_rows and kept.num_rows:
            assert min(kept.column("quality_score").to_pylist()) >= max(rejected.column("quality_score").to_pylist())
