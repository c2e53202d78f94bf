"""The training recipe: annotations table -> usable rows -> seeded split -> features -> model -> metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from classifiers.data import Split, TrainingData, load_training_data, split
from classifiers.featurizers import CachedFeaturizer, get_featurizer
from classifiers.metrics import agreement
from classifiers.models import QualityModel, fit_fasttext, fit_forest, new_model_info


@dataclass
class TrainResult:
    model: QualityModel
    metrics: dict[str, Any]
    data: TrainingData
    split: Split
    val_pred: np.ndarray
    train_pred: np.ndarray


def default_decision_threshold(objective: str, label_threshold: float) -> float:
    return label_threshold if objective == "regress" else 0.5


def train_quality_model(
    table: pa.Table,
    cfg: Any,  # factory.config.ClassifierConfig (duck-typed: classifiers/ imports nothing of the project)
    *,
    decision_threshold: float | None = None,
    cache_dir: str | Path | None = None,
    featurizer: CachedFeaturizer | None = None,
    threads: int | None = None,
    lineage: dict[str, Any] | None = None,
) -> TrainResult:
    t0 = time.time()
    data = load_training_data(table, cfg.label_threshold, cfg.min_rows, cfg.label_from)
    sp = split(data, cfg.val_fraction, cfg.seed)
    objective = cfg.objective if cfg.model == "random_forest" else "classify"
    if decision_threshold is None:
        decision_threshold = default_decision_threshold(objective, cfg.label_threshold)

    timings: dict[str, float] = {}
    if cfg.model == "random_forest":
        if featurizer is None:
            featurizer = get_featurizer(cfg.featurizer, max_tokens=cfg.max_tokens, threads=threads, cache_dir=cache_dir if cfg.cache_embeddings else None)
        t = time.time()
        X = featurizer.embed(data.texts)
        timings["featurize_s"] = round(time.time() - t, 3)
        t = time.time()
        est = fit_forest(
            X[sp.train], data.labels[sp.train], data.scores[sp.train], objective, cfg.n_estimators, cfg.seed, n_jobs=threads or 1
        )
        timings["fit_s"] = round(time.time() - t, 3)
        info = new_model_info("random_forest", objective, featurizer, featurizer.inner.max_tokens, cfg.label_threshold)
        model = QualityModel(info, est)
        val_pred = model.predict_features(X[sp.val])
        train_pred = model.predict_features(X[sp.train])
    else:
        t = time.time()
        info = new_model_info("fasttext", "classify", None, cfg.max_tokens, cfg.label_threshold)
        est = fit_fasttext([data.texts[i] for i in sp.train], data.labels[sp.train], cfg.seed, info["featurizer"]["max_chars"])
        info["featurizer"]["params"] = est.train_params  # the learning rate actually used, after any retry
        timings["fit_s"] = round(time.time() - t, 3)
        model = QualityModel(info, est)
        val_pred = model.predict_texts([data.texts[i] for i in sp.val])
        train_pred = model.predict_texts([data.texts[i] for i in sp.train])

    default_thr = default_decision_threshold(objective, cfg.label_threshold)
    val = agreement(data.labels[sp.val], data.scores[sp.val], val_pred, decision_threshold, data.expected[sp.val])
    metrics: dict[str, Any] = {
        "model": model.kind,
        "objective": objective,
        "featurizer": info["featurizer"]["id"],
        "featurizer_name": info["featurizer"]["name"],
        "label_threshold": cfg.label_threshold,
        "decision_threshold": decision_threshold,
        "training_size": int(len(sp.train)),
        "validation_size": int(len(sp.val)),
        "rows_total": data.n_total,
        "rows_used": len(data.ids),
        "rows_excluded": data.excluded,
        "positive_rate": round(float(data.labels.mean()), 6),
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "validation": val,
        "train": agreement(data.labels[sp.train], data.scores[sp.train], train_pred, decision_threshold),
        "timings": {**timings, "total_s": round(time.time() - t0, 3)},
    }
    # the headline numbers, flat, for tables and dashboards
    for k in ("f1", "precision", "recall", "roc_auc", "spearman_vs_llm_score", "accuracy"):
        metrics[k] = val[k]
    if default_thr != decision_threshold:
        metrics["validation_at_default_threshold"] = agreement(
            data.labels[sp.val], data.scores[sp.val], val_pred, default_thr, data.expected[sp.val]
        )
    model.info["lineage"] = lineage or {}
    model.info["config"] = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(vars(cfg))
    model.info["training_size"] = int(len(sp.train))
    model.info["validation_size"] = int(len(sp.val))
    model.info["decision_threshold"] = decision_threshold
    metrics["lineage"] = model.info["lineage"]
    return TrainResult(model, metrics, data, sp, val_pred, train_pred)


def write_artifacts(result: TrainResult, directory: str | Path) -> Path:
    """model.json + model file + metrics.json + predictions.parquet (every used row: split, label, LLM score, prediction)."""
    import pyarrow.parquet as pq

    d = Path(directory)
    result.model.save(d)
    (d / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    data, sp = result.data, result.split
    n = len(data.ids)
    which = np.empty(n, dtype=object)
    pred = np.empty(n, np.float64)
    which[sp.train], which[sp.val] = "train", "val"
    pred[sp.train], pred[sp.val] = result.train_pred, result.val_pred
    pq.write_table(
        pa.table(
            {
                "id": data.ids,
                "split": which.tolist(),
                "label": data.labels,
                "llm_score": data.scores,
                "quality_score": pred,
            }
        ),
        d / "predictions.parquet",
    )
    return d
