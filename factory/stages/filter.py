"""Filter: keep rows whose ``quality_score`` passes a threshold, or the top fraction by score.

* ``threshold``: keep ``quality_score >= threshold``; the rest are dropped as ``below_threshold``.
* ``top_fraction`` (wins over threshold when set): keep the ``ceil(top_fraction * n)`` best-scored rows of the
  whole version, ties broken by id, so the kept set is exact and the same however the shards are split.  The
  driver finds the cut-off row once (:func:`plan_cutoff`); each shard then compares against it.  The rest are
  dropped as ``below_top_fraction``.

Rows without a score (null or NaN) are dropped as ``missing_score``.  Every dropped row goes to the
``rejected`` side table with all its columns (score included) and a ``reason``, so counts reconcile as
``in = out + dropped`` and nothing disappears silently.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.stages.base import ShardResult


class FilterError(ValueError):
    pass


@dataclass(frozen=True)
class Cutoff:
    mode: str  # "threshold" | "top_fraction"
    threshold: float | None = None
    score: float | None = None  # top_fraction: the last kept (score, id) in (score desc, id asc) order
    id: str | None = None
    keep: int | None = None  # top_fraction: rows kept in the whole version

    @property
    def reason(self) -> str:
        return "below_threshold" if self.mode == "threshold" else "below_top_fraction"

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def plan_cutoff(cfg: Any, ids: list[str] | None = None, scores: np.ndarray | None = None) -> Cutoff:
    """``cfg`` is the FilterConfig; ids/scores of the whole version are needed for top_fraction only."""
    if cfg.top_fraction is None:
        if cfg.threshold is None:
            raise FilterError("filter needs filter.threshold or filter.top_fraction")
        return Cutoff("threshold", threshold=float(cfg.threshold))
    assert ids is not None and scores is not None
    scores = np.asarray(scores, np.float64)
    valid = ~np.isnan(scores)
    n = int(valid.sum())
    k = min(n, math.ceil(cfg.top_fraction * n - 1e-9))
    if k <= 0:
        return Cutoff("top_fraction", score=math.inf, id="", keep=0)
    order = sorted((i for i in range(len(ids)) if valid[i]), key=lambda i: (-scores[i], ids[i]))
    last = order[k - 1]
    return Cutoff("top_fraction", score=float(scores[last]), id=ids[last], keep=k)


def _scores(table: pa.Table) -> np.ndarray:
    col = table.column("quality_score").combine_chunks() if table.num_rows else pa.array([], pa.float64())
    return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)  # null -> NaN


class Filter:
    name = "filter"

    def __init__(self, cutoff: Cutoff):
        self.cutoff = cutoff

    def keep_mask(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(keep, missing): booleans per row."""
        if "quality_score" not in table.column_names:
            raise FilterError("rows have no quality_score column: run the score stage before filter")
        s = _scores(table)
        missing = np.isnan(s)
        c = self.cutoff
        with np.errstate(invalid="ignore"):
            if c.mode == "threshold":
                keep = s >= c.threshold
            else:
                ids = np.asarray(table.column("id").to_pylist(), dtype=object)
                keep = (s > c.score) | ((s == c.score) & (ids <= c.id))
        return keep & ~missing, missing

    def filter_table(self, table: pa.Table) -> ShardResult:
        keep, missing = self.keep_mask(table)
        kept = table.filter(pa.array(keep))
        rej_mask = ~keep
        rejected = table.filter(pa.array(rej_mask))
        reasons = np.where(missing[rej_mask], "missing_score", self.cutoff.reason)
        rejected = rejected.append_column("reason", pa.array(reasons.tolist(), pa.string()))
        dropped = Counter(reasons.tolist())
        return ShardResult(kept, table.num_rows, dropped=dropped, side={"rejected": rejected})

    def filter_file(self, path: str | Path) -> ShardResult:
        return self.filter_table(pq.read_table(path))
