"""Running a stage's tasks with Ray Data, resumable through the store's completion markers.

Each task reads its input, runs pure stage code and writes its output plus a completion marker through the
version writer.  Tasks with a marker are skipped, so a rerun after a kill recomputes only unfinished ones; a
task retried by Ray after a worker dies rewrites the same files (writes are atomic renames); and when a lost
node fails a whole execution, the unfinished tasks are resubmitted up to ``attempts`` times.
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import Any, Callable

from factory.stages.base import ShardResult
from factory.store import VersionWriter

log = logging.getLogger(__name__)


def run_marked_tasks(
    writer: VersionWriter,
    tasks: list[tuple[str, Any]],
    work: Callable[[str, Any], None],
    *,
    concurrency: int | None = None,
    num_cpus: float = 1,
    attempts: int = 1,
) -> int:
    """Run ``work(marker, payload)`` on Ray Data for every task without a completion marker; ``work`` writes its
    output and then the marker.  Returns how many tasks ran (0: everything was already done)."""
    import ray.data

    ran = 0
    for attempt in range(attempts):
        todo = [(name, payload) for name, payload in tasks if not writer.shard_done(name)]
        if not todo:
            break
        ran = ran or len(todo)
        items = [{"name": n, "payload": pickle.dumps(p)} for n, p in todo]

        def apply(row: dict[str, Any]) -> dict[str, Any]:
            work(row["name"], pickle.loads(row["payload"]))
            return {"name": row["name"]}

        kwargs: dict[str, Any] = {"num_cpus": num_cpus}  # Ray retries a task lost with its worker (default 3)
        if concurrency:
            kwargs["concurrency"] = concurrency
        try:
            ray.data.from_items(items, override_num_blocks=len(items)).map(apply, **kwargs).take_all()
        except Exception as e:  # a lost node can fail the whole execution: resubmit what is unfinished
            if attempt == attempts - 1:
                raise
            log.warning("attempt %d failed (%s: %s); resubmitting unfinished tasks", attempt + 1, type(e).__name__, str(e)[:200])
            time.sleep(1.0)
    missing = [n for n, _ in tasks if not writer.shard_done(n)]
    if missing:
        raise RuntimeError(f"tasks finished without a completion marker: {missing[:5]}")
    return ran


def run_shard_tasks(
    writer: VersionWriter,
    tasks: list[tuple[str, Any]],
    fn: Callable[[Any], ShardResult],
    *,
    concurrency: int | None = None,
    num_cpus: float = 1,
) -> dict[str, dict[str, Any]]:
    """Run ``fn(payload)`` for every (shard, payload) without a completion marker, writing each result as that
    shard of the version; returns every shard's marker."""

    def work(shard: str, payload: Any) -> None:
        result = fn(payload)
        writer.write_shard(shard, result.table, result.counts, result.side)

    run_marked_tasks(writer, tasks, work, concurrency=concurrency, num_cpus=num_cpus)
    done = writer.done_shards()
    return {s: done[s] for s, _ in tasks}
