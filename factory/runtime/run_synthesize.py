"""Synthesize on Ray: recipes on the driver, replies through the response cache and an engine (the same path as
annotate: a Ray Data actor pool for local/vllm, asyncio for openai), then one Ray task per shard that parses,
verifies exercises in the sandbox and writes rows + the ``generations`` audit table with a completion marker.

The new dataset version is the parent's rows (passed through shard by shard) plus the kept generations, so
``decontaminate``, ``pack`` and ``probe`` read one version as usual.  Its id hashes the synthesize config, the
engine identity, both templates (id + hash) and the list files' hashes; an unchanged rerun is a cache hit, and
a rerun after a kill or an engine outage sends only the requests that have no cached reply.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.engines.base import BudgetExhausted, engine_identity
from factory.pipeline import StageContext
from factory.runtime.executor import run_shard_tasks
from factory.runtime.registry import runner
from factory.runtime.run_annotate import engine_header, reply_to
from factory.stages.base import ShardResult
from factory.stages.synthesize import Diversity, Synthesizer, plan_recipes, snippet_of
from factory.store import BASE_SCHEMA, Version, merge_counts

log = logging.getLogger(__name__)


def _snippets(parent: Version, ids: set[str], max_chars: int) -> dict[str, str]:
    """The heads of the chosen parent documents, streaming the parent (only those texts are held)."""
    out: dict[str, str] = {}
    if not ids:
        return out
    wanted = pa.array(sorted(ids), pa.string())
    for batch in parent.iter_batches(columns=["id", "text"], batch_size=4096):
        t = pa.Table.from_batches([batch])
        for row in t.filter(pc.is_in(t.column("id"), wanted)).to_pylist():
            out.setdefault(row["id"], snippet_of(row["text"] or "", max_chars))
    return out


def _pass_through(path: str) -> ShardResult:
    table = pq.read_table(path)
    return ShardResult(table, table.num_rows)


@runner("synthesize")
def run_synthesize(ctx: StageContext) -> tuple[Version, bool]:
    cfg = ctx.cfg.synthesize
    ecfg = ctx.cfg.engine
    parent = ctx.need("dataset")
    lists = Diversity.load(cfg)
    ident = engine_identity(ecfg)
    synth = Synthesizer.from_config(cfg, ident)
    templates = {k: synth.template_info(k) for k in ("textbook", "exercise")}
    vid = ctx.version_id(parent, extra={"engine": ident, "templates": templates, "lists": lists.hashes})
    hit = ctx.cached(vid)
    if hit:
        return hit, True

    t0 = time.time()
    pool = sorted(parent.read(["id"]).column("id").to_pylist()) if cfg.seed_snippets and cfg.textbooks else []
    recipes = plan_recipes(cfg, lists, pool)
    snippets = _snippets(parent, {r.snippet_id for r in recipes if r.snippet_id}, cfg.snippet_chars)
    requests = [synth.request(r, snippets.get(r.snippet_id, "")) for r in recipes]

    replies = reply_to(ctx, requests, cfg.batch_size)
    responses = replies.responses
    if any(r.error_kind == "budget" for r in replies.fresh):
        done = sum(1 for r in requests if r.key in responses and responses[r.key].error is None)
        raise BudgetExhausted(
            f"synthesize: budget spent after {done}/{len(requests)} generations; the replies are cached: rerun "
            f"with a larger engine.max_total_tokens / max_cost_usd to finish", done=done, total=len(requests)
        )

    schema = pq.read_schema(parent.data_files()[0]) if parent.data_files() else BASE_SCHEMA
    header = {"engine": engine_header(ecfg, ident), "templates": templates, "lists": lists.hashes}
    writer = ctx.begin(vid, "dataset", parent, inputs={"dataset": parent.id}, extra_header=header)
    items = [
        {"recipe": rec.to_json(), "request": dataclasses.asdict(req),
         "response": responses[req.key].to_json() if req.key in responses else None}
        for rec, req in zip(recipes, requests)
    ]
    tasks: list[tuple[str, Any]] = [(f"parent-{p.stem}", ("parent", str(p))) for p in parent.data_files()]
    tasks += [
        (f"synthetic-{i // cfg.rows_per_shard:05d}", ("synthetic", items[i : i + cfg.rows_per_shard]))
        for i in range(0, len(items), cfg.rows_per_shard)
    ]

    def work(payload: tuple[str, Any]) -> ShardResult:
        what, arg = payload
        return _pass_through(arg) if what == "parent" else synth.shard(arg, schema)

    markers = run_shard_tasks(writer, tasks, work)
    counts = merge_counts(m["counts"] for m in markers.values())
    gens = [m["counts"] for name, m in markers.items() if name.startswith("synthetic-")]
    kept = sum(c["out"] for c in gens)
    stats = {
        "generations": len(items),
        "kept": kept,
        "by_kind": {k: sum(1 for r in recipes if r.kind == k) for k in ("textbook", "exercise")},
        "cached_responses": replies.n_cached,
        "new_requests": replies.n_sent,
        "usage": replies.usage,
        "seconds": round(time.time() - t0, 3),
    }
    version = writer.commit(counts, schema=schema, extra={"synthesize_stats": stats}, config_yaml=ctx.config_yaml())
    return version, False
