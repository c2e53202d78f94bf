"""Running a stage's shard tasks with Ray Data, resumable through the store's completion markers.

Each task reads its input, runs pure stage code and writes its shard plus a completion marker through the
version writer.  Shards with a marker are skipped, so a rerun after a kill recomputes only unfinished ones, and
a task retried by Ray after a worker dies rewrites the same shard (writes are atomic renames).
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from factory.stages.base import ShardResult
from factory.store import VersionWriter


def run_shard_tasks(
    writer: VersionWriter,
    tasks: list[tuple[str, Any]],
    fn: Callable[[Any], ShardResult],
    *,
    concurrency: int | None = None,
    num_cpus: float = 1,
) -> dict[str, dict[str, Any]]:
    """Run ``fn(payload)`` for every (shard, payload) without a completion marker; returns every shard's marker."""
    import ray.data

    todo = [(shard, payload) for shard, payload in tasks if not writer.shard_done(shard)]
    if todo:
        items = [{"shard": s, "payload": pickle.dumps(p)} for s, p in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))

        def apply(row: dict[str, Any]) -> dict[str, Any]:
            result = fn(pickle.loads(row["payload"]))
            writer.write_shard(row["shard"], result.table, result.counts, result.side)
            return {"shard": row["shard"], "out": result.counts["out"]}

        kwargs: dict[str, Any] = {"num_cpus": num_cpus}  # Ray Data retries tasks lost with a worker
        if concurrency:
            kwargs["concurrency"] = concurrency
        ds.map(apply, **kwargs).take_all()
    done = writer.done_shards()
    missing = [s for s, _ in tasks if s not in done]
    if missing:
        raise RuntimeError(f"shards finished without a completion marker: {missing[:5]}")
    return {s: done[s] for s, _ in tasks}
