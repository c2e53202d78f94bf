"""train_classifier, score and filter on Ray and the store.

* ``train_classifier``: reads the latest annotations version, trains on the driver (a few hundred rows), writes a
  version of kind ``classifier`` (parent: the annotations version) whose artifacts hold model.json, the model
  file, metrics.json and predictions.parquet.  Counts: in = out = rows used for training and validation.
* ``score``: a Ray Data actor pool (``map_batches`` with a class UDF, ``concurrency = filter.num_workers``); each
  actor loads the model and its featurizer once, then scores whole input shards in batches of
  ``filter.batch_size``.  One output shard per input shard, same name, same row order.
* ``filter``: one Ray task per shard through :func:`run_shard_tasks`; the top-fraction cut-off is found on the
  driver first, from the score column only.

Both dataset-writing stages resume: shards with a completion marker are not redone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.pipeline import StageContext
from factory.runtime.executor import run_shard_tasks
from factory.runtime.registry import runner
from factory.store import Version, VersionWriter, merge_counts


def embedding_cache_dir(ctx: StageContext) -> Path | None:
    if not ctx.cfg.classifier.cache_embeddings:
        return None
    return ctx.store.root / "cache" / "embeddings"


def decision_threshold(ctx: StageContext) -> float | None:
    """The threshold the filter will apply (metrics are reported at it); None: the model's default."""
    f = ctx.cfg.filter
    return f.threshold if f.top_fraction is None else None


# --------------------------------------------------------------------------------------------- train
@runner("train_classifier")
def run_train_classifier(ctx: StageContext) -> tuple[Version, bool]:
    from classifiers.train import train_quality_model, write_artifacts

    ann = ctx.need("annotations")
    cfg = ctx.cfg.classifier
    thr = decision_threshold(ctx)
    vid = ctx.version_id(ann, extra={"decision_threshold": thr})
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    table = ann.read()
    lineage = {
        "annotations_version": ann.id,
        "annotations_parent": ann.parent,
        "templates": _distinct(table, "template_id", "template_hash"),
        "annotators": _distinct(table, "engine", "model"),
    }
    threads = ctx.cfg.ray.num_cpus or os.cpu_count() or 1
    result = train_quality_model(
        table, cfg, decision_threshold=thr, cache_dir=embedding_cache_dir(ctx), threads=threads, lineage=lineage
    )
    result.model.info["lineage"]["classifier_version"] = vid
    writer = ctx.begin(
        vid,
        "classifier",
        ann,
        inputs={"annotations": ann.id},
        extra_header={
            "model": result.model.kind,
            "objective": result.model.objective,
            "featurizer": result.model.info["featurizer"]["id"],
        },
    )
    write_artifacts(result, writer.artifacts())
    n = len(result.data.ids)
    counts = {"in": n, "out": n, "dropped": {}, "quarantined": {}}
    m = result.metrics
    headline = {k: m[k] for k in ("f1", "precision", "recall", "roc_auc", "spearman_vs_llm_score")}
    version = writer.commit(
        counts,
        schema=None,
        extra={
            "metrics": headline,
            "training_size": m["training_size"],
            "validation_size": m["validation_size"],
            "annotation_rows": {"total": result.data.n_total, "excluded": result.data.excluded},
        },
        config_yaml=ctx.config_yaml(),
    )
    return version, False


def _distinct(table: pa.Table, a: str, b: str) -> list[list[Any]]:
    if a not in table.column_names or b not in table.column_names:
        return []
    return [list(p) for p in sorted(set(zip(table.column(a).to_pylist(), table.column(b).to_pylist())), key=str)]


# --------------------------------------------------------------------------------------------- score
class ScoreActor:
    """A Ray Data class UDF: the model and featurizer load once per actor; each call scores whole shards."""

    def __init__(self, writer: VersionWriter, model_dir: str, model_id: str, batch_size: int, cache_dir: str | None):
        from factory.stages.score import Scorer

        self.writer = writer
        # one thread per actor (each actor holds one CPU): no oversubscription, and the same arithmetic
        # whatever the pool size
        self.scorer = Scorer(model_dir, model_id, batch_size=batch_size, cache_dir=cache_dir, threads=1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        shards, outs = [], []
        for shard, path in zip(batch["shard"], batch["path"]):
            result = self.scorer.score_file(str(path))
            self.writer.write_shard(str(shard), result.table, result.counts, result.side)
            shards.append(str(shard))
            outs.append(result.counts["out"])
        return {"shard": shards, "out": outs}


@runner("score")
def run_score(ctx: StageContext) -> tuple[Version, bool]:
    import ray.data

    from factory.stages.score import output_schema

    ds = ctx.need("dataset")
    clf = ctx.need("classifier")
    f = ctx.cfg.filter
    # batch size and worker count do not change a score, so they do not change the version id
    vid = ctx.version_id(ds, extra={"classifier": clf.id}, config={"columns": ["quality_score", "quality_model"]})
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    writer = ctx.begin(vid, "dataset", ds, inputs={"classifier": clf.id}, extra_header={"quality_model": clf.id})
    files = ds.data_files()
    todo = [{"shard": p.stem, "path": str(p)} for p in files if not writer.shard_done(p.stem)]
    if todo:
        cache = embedding_cache_dir(ctx)
        data = ray.data.from_items(todo, override_num_blocks=len(todo))
        data.map_batches(
            ScoreActor,
            fn_constructor_kwargs={
                "writer": writer,
                "model_dir": str(clf.artifacts()),
                "model_id": clf.id,
                "batch_size": f.batch_size,
                "cache_dir": str(cache) if cache else None,
            },
            batch_size=1,
            batch_format="numpy",
            concurrency=min(f.num_workers, len(todo)),
            num_cpus=1,
        ).take_all()
    done = writer.done_shards()
    missing = [p.stem for p in files if p.stem not in done]
    if missing:
        raise RuntimeError(f"score: shards finished without a completion marker: {missing[:5]}")
    counts = merge_counts(done[p.stem]["counts"] for p in files)
    schema = output_schema(pq.read_schema(files[0])) if files else None
    version = writer.commit(counts, schema=schema, extra={"quality_model": clf.id}, config_yaml=ctx.config_yaml())
    return version, False


# --------------------------------------------------------------------------------------------- filter
@runner("filter")
def run_filter(ctx: StageContext) -> tuple[Version, bool]:
    from factory.stages.filter import Filter, FilterError, plan_cutoff

    ds = ctx.need("dataset")
    f = ctx.cfg.filter
    names = {n for n, _ in ds.manifest.get("schema") or []}
    if ds.data_files() and "quality_score" not in names:
        raise FilterError(f"dataset version {ds.id} has no quality_score column: run the score stage before filter")
    rule = {"threshold": f.threshold} if f.top_fraction is None else {"top_fraction": f.top_fraction}
    vid = ctx.version_id(ds, config=rule)
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    if f.top_fraction is not None:
        t = ds.read(["id", "quality_score"])
        scores = t.column("quality_score").cast(pa.float64()).to_numpy(zero_copy_only=False) if t.num_rows else []
        cutoff = plan_cutoff(f, t.column("id").to_pylist() if t.num_rows else [], scores)
    else:
        cutoff = plan_cutoff(f)
    writer = ctx.begin(vid, "dataset", ds, extra_header={"cutoff": cutoff.describe()})
    stage = Filter(cutoff)
    files = ds.data_files()
    markers = run_shard_tasks(writer, [(p.stem, str(p)) for p in files], stage.filter_file)
    counts = merge_counts(m["counts"] for m in markers.values())
    schema = pq.read_schema(files[0]) if files else None
    version = writer.commit(counts, schema=schema, extra={"cutoff": cutoff.describe()}, config_yaml=ctx.config_yaml())
    return version, False
