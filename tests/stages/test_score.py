"""The score stage's pure logic, without Ray: columns added, values = the model's, batches invisible."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from classifiers.models import QualityModel
from classifiers.train import train_quality_model, write_artifacts
from factory.config import ClassifierConfig
from factory.stages.score import Scorer, output_schema
from tests.classifiers.helpers import annotated_sample, demo_table


@pytest.fixture(scope="module")
def ft_model_dir(tmp_path_factory):
    # fastText keeps this file fast; the embedding path through actors is tested in test_score_ray.py
    r = train_quality_model(annotated_sample(120), ClassifierConfig(model="fasttext", featurizer="none"))
    return write_artifacts(r, tmp_path_factory.mktemp("ft"))


def test_scorer_adds_score_and_model_id(ft_model_dir):
    t = demo_table(200).slice(0, 50)
    s = Scorer(ft_model_dir, "train_classifier-abc", batch_size=7)
    out = s.score_table(t)
    assert out.column_names == t.column_names + ["quality_score", "quality_model"]
    assert out.schema == output_schema(t.schema)
    assert out.column("id").to_pylist() == t.column("id").to_pylist()
    assert set(out.column("quality_model").to_pylist()) == {"train_classifier-abc"}
    got = np.asarray(out.column("quality_score").to_pylist())
    want = QualityModel.load(ft_model_dir).predict_texts(t.column("text").to_pylist())
    assert np.array_equal(got, want)
    # the batch size is invisible in the result
    assert np.array_equal(Scorer(ft_model_dir, "train_classifier-abc", batch_size=1000).scores(t.column("text").to_pylist()), got)


def test_rescoring_replaces_old_columns_and_handles_empty_and_null(ft_model_dir):
    s = Scorer(ft_model_dir, "m2")
    t = demo_table(200).slice(0, 5)
    once = Scorer(ft_model_dir, "m1").score_table(t)
    twice = s.score_table(once)
    assert twice.column_names.count("quality_score") == 1
    assert set(twice.column("quality_model").to_pylist()) == {"m2"}
    empty = s.score_table(t.slice(0, 0))
    assert empty.num_rows == 0 and "quality_score" in empty.column_names
    nulls = s.score_table(pa.table({"id": ["a"], "text": pa.array([None], pa.string())}))
    assert 0.0 <= nulls.column("quality_score")[0].as_py() <= 1.0
