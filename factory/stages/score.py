"""Score: add ``quality_score`` and ``quality_model`` to every row with a trained quality classifier.

``quality_score`` is the classifier's probability of the positive class (score >= label_threshold), or the
regressed LLM score for a regression model; ``quality_model`` is the classifier version id, so any row says
which model judged it.  :class:`Scorer` loads the model and its featurizer once and scores a shard in batches
of ``filter.batch_size``; it never imports ray (the runtime puts one Scorer in each actor of a pool).

A row's score is a function of its text and the model only: featurizers give a document the same vector
whatever shares its batch, and the forest predicts single-threaded, so 1 or N workers give identical scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from classifiers.models import QualityModel
from factory.stages.base import ShardResult

SCORE_FIELDS = [pa.field("quality_score", pa.float64()), pa.field("quality_model", pa.string())]


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    keep = [f for f in input_schema if f.name not in ("quality_score", "quality_model")]
    return pa.schema(keep + SCORE_FIELDS)


class Scorer:
    name = "score"

    def __init__(
        self,
        model_dir: str | Path,
        model_id: str,
        batch_size: int = 256,
        cache_dir: str | Path | None = None,
        threads: int | None = 1,
    ):
        self.model = QualityModel.load(model_dir)
        self.model_id = model_id
        self.batch_size = batch_size
        self.featurizer = self.model.make_featurizer(cache_dir=cache_dir, threads=threads)

    def scores(self, texts: list[str | None]) -> np.ndarray:
        out = np.empty(len(texts), np.float64)
        for i in range(0, len(texts), self.batch_size):
            chunk = [t or "" for t in texts[i : i + self.batch_size]]
            out[i : i + len(chunk)] = self.model.predict_texts(chunk, self.featurizer)
        return out

    def score_table(self, table: pa.Table) -> pa.Table:
        for name in ("quality_score", "quality_model"):
            if name in table.column_names:
                table = table.drop_columns([name])
        s = self.scores(table.column("text").to_pylist())
        table = table.append_column(SCORE_FIELDS[0], pa.array(s, pa.float64()))
        return table.append_column(SCORE_FIELDS[1], pa.array([self.model_id] * table.num_rows, pa.string()))

    def score_file(self, path: str | Path) -> ShardResult:
        table = pq.read_table(path)
        out = self.score_table(table)
        return ShardResult(out, table.num_rows)
