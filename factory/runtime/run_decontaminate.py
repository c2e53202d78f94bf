"""decontaminate on Ray and the store: one Ray task per shard through :func:`run_shard_tasks`.

The benchmark index is built once on the driver (~0.1 s for HumanEval) and shipped to the tasks with the
stage object.  The version id covers the stage config and each benchmark's file hash, so a new HumanEval file
is a new version; the manifest records the benchmarks and the index size.  Resumes from completion markers.
"""

from __future__ import annotations

import pyarrow.parquet as pq

from factory.pipeline import StageContext
from factory.runtime.executor import run_shard_tasks
from factory.runtime.registry import runner
from factory.store import Version, merge_counts


@runner("decontaminate")
def run_decontaminate(ctx: StageContext) -> tuple[Version, bool]:
    from factory.stages.decontaminate import Decontaminator, load_benchmark

    ds = ctx.need("dataset")
    cfg = ctx.cfg.decontaminate
    benchmarks = [load_benchmark(name) for name in cfg.benchmarks]
    vid = ctx.version_id(ds, extra={"benchmarks": [b.identity() for b in benchmarks]})
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    stage = Decontaminator(cfg, benchmarks)
    writer = ctx.begin(vid, "dataset", ds)
    files = ds.data_files()
    markers = run_shard_tasks(writer, [(p.stem, str(p)) for p in files], stage.decontaminate_file)
    counts = merge_counts(m["counts"] for m in markers.values())
    schema = pq.read_schema(files[0]) if files else None
    version = writer.commit(counts, schema=schema, extra={"decontamination": stage.stats}, config_yaml=ctx.config_yaml())
    return version, False
