"""Held-out agreement between a quality model and the LLM labels it was trained to imitate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


def agreement(
    labels: np.ndarray,
    llm_scores: np.ndarray,
    pred: np.ndarray,
    decision_threshold: float,
    expected_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of ``pred`` (quality_score: a probability or a regressed score) against the LLM.

    ``labels`` are the LLM's binary labels (score >= label_threshold); predicted positive is
    ``pred >= decision_threshold``, the rule the filter applies.  ROC-AUC and Spearman are threshold-free.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    labels = np.asarray(labels, np.int64)
    pred = np.asarray(pred, np.float64)
    yhat = (pred >= decision_threshold).astype(np.int64)
    both = len(np.unique(labels)) == 2
    cm = confusion_matrix(labels, yhat, labels=[0, 1])

    def spear(a: np.ndarray, b: np.ndarray) -> float | None:
        ok = ~(np.isnan(a) | np.isnan(b))
        if ok.sum() < 3 or np.all(a[ok] == a[ok][0]) or np.all(b[ok] == b[ok][0]):
            return None
        return _num(spearmanr(a[ok], b[ok]).statistic)

    out: dict[str, Any] = {
        "n": int(len(labels)),
        "positives": int(labels.sum()),
        "decision_threshold": float(decision_threshold),
        "f1": _num(f1_score(labels, yhat, zero_division=0)),
        "precision": _num(precision_score(labels, yhat, zero_division=0)),
        "recall": _num(recall_score(labels, yhat, zero_division=0)),
        "accuracy": _num((yhat == labels).mean()) if len(labels) else None,
        "predicted_positive_rate": _num(yhat.mean()) if len(labels) else None,
        "roc_auc": _num(roc_auc_score(labels, pred)) if both else None,
        "average_precision": _num(average_precision_score(labels, pred)) if both else None,
        "spearman_vs_llm_score": spear(pred, np.asarray(llm_scores, np.float64)),
        "confusion_matrix": {
            "labels": ["negative", "positive"],
            "rows": "LLM label",
            "cols": "predicted",
            "matrix": cm.tolist(),
            "tn": int(cm[0, 0]),
            "fp": int(cm[0, 1]),
            "fn": int(cm[1, 0]),
            "tp": int(cm[1, 1]),
        },
    }
    if expected_scores is not None and not np.all(np.isnan(expected_scores)):
        out["spearman_vs_llm_expected_score"] = spear(pred, np.asarray(expected_scores, np.float64))
    return out
