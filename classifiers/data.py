"""From an annotations table to training rows, labels and a seeded train/validation split.

Usable rows have ``parse_status == "ok"``, a non-null ``score`` and text.  The label is
``score >= label_threshold``.  The split is stratified by label and seeded, over rows ordered by id, so the same
annotations and the same seed give the same split whatever the shard order: the benchmark compares every
(featurizer x classifier) pair on exactly this split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from classifiers import ClassifierDataError

REQUIRED_COLUMNS = ("id", "text", "score", "parse_status")


@dataclass
class TrainingData:
    ids: list[str]
    texts: list[str]
    scores: np.ndarray  # the LLM's parsed score (float)
    expected: np.ndarray  # the LLM's expected score when the annotator logged one, else NaN
    labels: np.ndarray  # int 0/1: score (or expected score, with label_from) >= label_threshold
    n_total: int
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows not used


@dataclass
class Split:
    train: np.ndarray  # indices into TrainingData
    val: np.ndarray


def load_training_data(
    table: pa.Table, label_threshold: float, min_rows: int, label_from: str = "score"
) -> TrainingData:
    """``label_from="expected_score"`` labels by the logprob-weighted score where the annotator logged one (a weak
    judge's argmax is mostly 0 or 1; its expectation still ranks documents), else by the parsed score."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ClassifierDataError(
            f"the annotations table lacks column(s) {missing}; expected an annotations version with at least "
            f"{', '.join(REQUIRED_COLUMNS)} (got columns {table.column_names})"
        )
    n_total = table.num_rows
    if n_total == 0:
        raise ClassifierDataError("the annotations version has no rows; run annotate on a non-empty dataset")
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    scores = table.column("score").to_pylist()
    status = table.column("parse_status").to_pylist()
    expected = table.column("expected_score").to_pylist() if "expected_score" in table.column_names else [None] * n_total

    keep: list[int] = []
    excluded: Counter = Counter()
    for i in range(n_total):
        if status[i] != "ok":
            excluded[f"parse_{status[i]}"] += 1
        elif scores[i] is None or not np.isfinite(scores[i]):
            excluded["score_missing"] += 1
        elif not texts[i]:
            excluded["empty_text"] += 1
        else:
            keep.append(i)
    if not keep:
        raise ClassifierDataError(
            f"all {n_total} annotation rows are unusable ({_fmt(excluded)}): no reply parsed to a score. "
            "Check the annotate template's output format and the engine (look at the raw_reply column)."
        )
    if len(keep) < min_rows:
        raise ClassifierDataError(
            f"only {len(keep)} usable annotation rows (of {n_total}; excluded: {_fmt(excluded) or 'none'}), fewer than "
            f"classifier.min_rows={min_rows}. Annotate more documents (annotate.sample_size) or lower classifier.min_rows."
        )
    keep.sort(key=lambda i: ids[i])
    s = np.asarray([float(scores[i]) for i in keep], np.float64)
    exp = np.asarray([np.nan if expected[i] is None else float(expected[i]) for i in keep], np.float64)
    basis = np.where(np.isfinite(exp), exp, s) if label_from == "expected_score" else s
    labels = (basis >= label_threshold).astype(np.int64)
    n_pos = int(labels.sum())
    n_neg = len(keep) - n_pos
    if n_pos == 0 or n_neg == 0:
        dist = ", ".join(f"{k:g}: {v}" for k, v in sorted(Counter(np.round(basis, 1).tolist()).items()))
        which = "positive" if n_neg == 0 else "negative"
        raise ClassifierDataError(
            f"all {len(keep)} usable annotation rows are {which} at classifier.label_threshold={label_threshold:g} "
            f"(LLM scores {dist}): a single class cannot train a classifier. Set label_threshold inside the score "
            "range, or annotate a more varied sample."
        )
    if min(n_pos, n_neg) < 2:
        raise ClassifierDataError(
            f"only {min(n_pos, n_neg)} row of the {'positive' if n_pos < 2 else 'negative'} class at "
            f"label_threshold={label_threshold:g} ({n_pos} positive, {n_neg} negative); need at least 2 of each to "
            "hold one out for validation. Annotate more documents or move label_threshold."
        )
    return TrainingData(
        ids=[ids[i] for i in keep],
        texts=[texts[i] for i in keep],
        scores=s,
        expected=exp,
        labels=labels,
        n_total=n_total,
        excluded=dict(excluded),
    )


def split(data: TrainingData, val_fraction: float, seed: int) -> Split:
    """Stratified, seeded; at least one row of each class on each side."""
    from sklearn.model_selection import train_test_split

    n = len(data.ids)
    n_val = int(round(n * val_fraction))
    n_val = min(max(n_val, 2), n - 2)
    idx = np.arange(n)
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=data.labels)
    return Split(np.sort(tr), np.sort(va))


def _fmt(c: Counter | dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
