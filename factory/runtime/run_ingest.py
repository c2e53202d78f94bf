"""Ingest on Ray Data: one task per planned shard, quarantine as a side table, counts reconciled."""

from __future__ import annotations

from factory.pipeline import StageContext
from factory.runtime.executor import run_shard_tasks
from factory.runtime.registry import runner
from factory.stages import ingest as ingest_stage
from factory.store import BASE_SCHEMA, merge_counts


@runner("ingest")
def run_ingest(ctx: StageContext):
    cfg = ctx.cfg.ingest
    tasks = ingest_stage.plan(cfg)
    vid = ctx.version_id(None, extra={"listing": ingest_stage.fingerprint(tasks)})
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    sources = sorted({(t.label, t.format) for t in tasks})
    writer = ctx.begin(vid, "dataset", None, extra_header={"sources": [list(s) for s in sources]})
    stage = ingest_stage.Ingest(cfg)
    markers = run_shard_tasks(writer, [(t.shard, t) for t in tasks], stage.read_task)
    counts = merge_counts(m["counts"] for m in markers.values())
    files = sum(len(t.paths) for t in tasks)
    version = writer.commit(counts, schema=BASE_SCHEMA, extra={"input_files": files}, config_yaml=ctx.config_yaml())
    return version, False
