"""Annotate on Ray: the sampled documents' requests go through the response cache, then an engine.

* local / vllm: a Ray Data actor pool (``map_batches`` with a class UDF, ``concurrency=engine.num_workers``),
  one model per actor.  Each actor appends its replies to the response cache as each batch finishes, so a
  run killed mid-stage loses at most the batches in flight.
* openai: the driver's asyncio client (I/O bound; one process keeps the budget exact).

The version id hashes the annotate config, the engine identity (kind, model, model file; never a key) and
the template id + hash, so changing any of them is a new version while an unchanged rerun is a cache hit.
A rerun after a kill, a server outage or a spent budget recomputes nothing it has a cached reply for.

Stopping conditions: a server that stays unavailable after the client's retries raises ``EngineUnavailable``
(nothing committed, every finished reply cached); a spent budget commits a *partial* annotations version
(its own id, ``partial: true``, the unsent documents counted as ``dropped.budget_exhausted``) and raises
``BudgetExhausted`` carrying it.  Rerunning with a larger budget completes the full version from the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from factory.config import EngineConfig
from factory.engines.base import BudgetExhausted, ChatRequest, ChatResponse, EngineUnavailable, engine_identity, make_engine
from factory.engines.cache import ResponseCache
from factory.pipeline import StageContext
from factory.prompts import load_template
from factory.runtime.registry import runner
from factory.stages import annotate as annotate_stage
from factory.stages.annotate import ANNOTATION_SCHEMA, Annotator
from factory.store import merge_counts

log = logging.getLogger(__name__)


class EngineWorker:
    """Ray Data class UDF: one engine (one model) per actor; replies go to the cache as they arrive."""

    def __init__(self, engine_cfg: dict[str, Any], cache_dir: str):
        self.engine = make_engine(EngineConfig.model_validate(engine_cfg))
        self.cache = ResponseCache(cache_dir, load=False)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        reqs = [ChatRequest(**json.loads(r)) for r in batch["request"]]
        # each reply is fsynced to the cache as it arrives: a kill loses at most the request in flight
        responses = self.engine.generate(reqs, on_response=self.cache.put)
        return {"key": [r.key for r in responses], "response": [json.dumps(r.to_json()) for r in responses]}


def run_engine_pool(engine_cfg: EngineConfig, requests: list[ChatRequest], cache_dir: Path, batch_size: int) -> list[ChatResponse]:
    import ray
    import ray.data

    items = [{"request": json.dumps(dataclasses.asdict(r))} for r in requests]
    n_blocks = max(1, min(len(items), engine_cfg.num_workers * 4))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    num_gpus = 0.0
    if engine_cfg.kind == "vllm" and ray.cluster_resources().get("GPU", 0) > 0:
        num_gpus = float(engine_cfg.tensor_parallel_size)
    out = ds.map_batches(
        EngineWorker,
        fn_constructor_kwargs={"engine_cfg": engine_cfg.model_dump(mode="json"), "cache_dir": str(cache_dir)},
        batch_size=batch_size,
        concurrency=engine_cfg.num_workers,
        num_cpus=engine_cfg.cpus_per_worker,
        num_gpus=num_gpus,
        batch_format="numpy",
    )
    rows = out.take_all()
    return [ChatResponse.from_json(json.loads(r["response"])) for r in rows]


def run_requests(engine_cfg: EngineConfig, requests: list[ChatRequest], cache: ResponseCache, batch_size: int) -> tuple[list[ChatResponse], dict[str, Any]]:
    """Responses for requests not in the cache; successes are cached as they arrive."""
    if not requests:
        return [], {}
    if engine_cfg.kind == "openai":
        engine = make_engine(engine_cfg)
        try:
            responses = engine.generate(requests, on_response=cache.put)
        finally:
            engine.close()
        return responses, engine.budget.summary()
    responses = run_engine_pool(engine_cfg, requests, cache.root, batch_size)
    cache.refresh()
    usage = {
        "requests": len(responses),
        "prompt_tokens": sum(r.prompt_tokens for r in responses),
        "completion_tokens": sum(r.completion_tokens for r in responses),
    }
    return responses, usage


@dataclasses.dataclass
class Replies:
    responses: dict[str, ChatResponse]  # by request key: cached and fresh
    fresh: list[ChatResponse]
    n_cached: int
    n_sent: int
    usage: dict[str, Any]


def reply_to(ctx: StageContext, requests: list[ChatRequest], batch_size: int) -> Replies:
    """Every request's reply: from the response cache, else from the engine (each new reply is cached as it
    arrives).  Raises ``EngineUnavailable`` when the server stayed down; budget errors are left to the caller."""
    ecfg = ctx.cfg.engine
    cache = ResponseCache(cache_dir_for(ctx))
    responses = cache.get_many([r.key for r in requests])
    n_cached = len(responses)
    todo = list({r.key: r for r in requests if r.key not in responses}.values())  # each key sent once
    log.info("%s: %d requests, %d cached, %d to send to %s", ctx.stage, len(requests), n_cached, len(todo), ecfg.kind)
    fresh, usage = run_requests(ecfg, todo, cache, batch_size)
    cache.close()
    for r in fresh:
        responses[r.key] = r
    unavailable = [r for r in fresh if r.error_kind == "unavailable"]
    if unavailable:
        done = sum(1 for r in requests if r.key in responses and responses[r.key].error is None)
        raise EngineUnavailable(
            f"{ctx.stage}: the {ecfg.kind} engine stayed unavailable for {len(unavailable)} request(s) after "
            f"{ecfg.max_retries} retries ({unavailable[0].error}); {done}/{len(requests)} replies are cached "
            f"and a rerun resumes from them"
        )
    return Replies(responses, fresh, n_cached, len(todo), usage)


def cache_dir_for(ctx: StageContext) -> Path:
    d = ctx.cfg.engine.cache_dir
    return Path(d).expanduser().resolve() if d else ctx.store.root / "cache" / "responses"


def engine_header(ecfg: EngineConfig, ident: dict[str, Any]) -> dict[str, Any]:
    """What the manifest records about the engine: identity and knobs; never the key (nor its variable's value)."""
    from factory.engines.openai_engine import redact_url

    h = {"identity": ident, "kind": ecfg.kind, "model": ecfg.model}
    if ecfg.kind == "openai":
        h["base_url"] = redact_url(ecfg.base_url)
        h["structured_output"] = ecfg.structured_output
    if ecfg.kind == "vllm":
        h["tensor_parallel_size"] = ecfg.tensor_parallel_size
        h["enable_prefix_caching"] = ecfg.enable_prefix_caching
    return h


@runner("annotate")
def run_annotate(ctx: StageContext):
    cfg = ctx.cfg.annotate
    ecfg = ctx.cfg.engine
    parent = ctx.need("dataset")
    template = load_template(cfg.template)
    ident = engine_identity(ecfg)
    tinfo = {"id": template.id, "hash": template.hash}
    vid = ctx.version_id(parent, extra={"engine": ident, "template": tinfo})
    hit = ctx.cached(vid)
    if hit:
        return hit, True

    t0 = time.time()
    keys_table = parent.read(["id", cfg.stratify_by] if cfg.stratify_by and cfg.stratify_by != "id" else ["id"])
    positions = annotate_stage.sample_table(keys_table, cfg)
    wanted = set(keys_table.column("id").take(pa.array(positions, pa.int64())).to_pylist()) if positions else set()
    by_id: dict[str, dict[str, Any]] = {}
    value_set = pa.array(sorted(wanted), pa.string())
    for batch in parent.iter_batches(columns=["id", "text", "source", "meta"], batch_size=4096):
        # stream the parent: only the sampled documents' text is ever held in memory
        t = pa.Table.from_batches([batch])
        for row in t.filter(pc.is_in(t.column("id"), value_set)).to_pylist():
            by_id.setdefault(row["id"], row)
    docs = [by_id[i] for i in keys_table.column("id").take(pa.array(positions, pa.int64())).to_pylist()] if positions else []
    annot = Annotator(cfg, template, ident)
    requests = [annot.request(d) for d in docs]
    keys = [r.key for r in requests]

    replies = reply_to(ctx, requests, cfg.batch_size)
    responses, usage = replies.responses, replies.usage
    budget_hit = [r for r in replies.fresh if r.error_kind == "budget"]
    stats = {
        "sampled": len(docs),
        "cached_responses": replies.n_cached,
        "new_requests": replies.n_sent,
        "usage": usage,
        "seconds": round(time.time() - t0, 3),
    }
    header = {
        "engine": engine_header(ecfg, ident),
        "template": {**tinfo, "path": str(template.path.name)},
        "sample": {"size": len(docs), "seed": cfg.seed, "stratify_by": cfg.stratify_by},
    }
    if budget_hit:
        unsent = {r.key for r in budget_hit}
        keep = [i for i, k in enumerate(keys) if k not in unsent]
        pvid = ctx.version_id(parent, extra={"engine": ident, "template": tinfo, "partial_of": vid, "done": len(keep)})
        version = ctx.cached(pvid) or _write(
            ctx, pvid, parent, annot, [docs[i] for i in keep], [keys[i] for i in keep], responses, cfg.rows_per_shard,
            header={**header, "partial": True, "complete_version": vid},
            stats=stats, n_in=len(docs), dropped={"budget_exhausted": len(docs) - len(keep)},
        )
        raise BudgetExhausted(
            f"annotate: budget spent after {len(keep)}/{len(docs)} documents "
            f"(tokens {usage.get('total_tokens')}, cost ${usage.get('cost_usd')}); committed partial version "
            f"{version.id}; rerun with a larger engine.max_total_tokens / max_cost_usd to complete {vid}",
            version=version, done=len(keep), total=len(docs),
        )
    version = _write(ctx, vid, parent, annot, docs, keys, responses, cfg.rows_per_shard, header=header, stats=stats, n_in=len(docs))
    return version, False


def _write(ctx, vid, parent, annot, docs, keys, responses, rows_per_shard, *, header, stats, n_in, dropped=None):
    writer = ctx.begin(vid, "annotations", parent, inputs={"dataset": parent.id}, extra_header=header)
    markers = []
    for s, start in enumerate(range(0, max(len(docs), 1), rows_per_shard)):
        chunk_docs = docs[start : start + rows_per_shard]
        if not chunk_docs:
            break
        res = annot.shard(chunk_docs, responses, keys[start : start + rows_per_shard])
        name = f"shard-{s:05d}"
        writer.write_shard(name, res.table, res.counts, res.side)
        markers.append(res.counts)
    counts = merge_counts(markers)
    counts["in"] = n_in
    counts["dropped"] = dict(dropped or {})
    status = {"ok": 0, "unparsed": 0, "error": 0}
    for k in keys:
        r = responses.get(k)
        if r is None or r.error is not None:
            status["error"] += 1
        else:
            status[annot.template.parse(r.text).status] += 1
    return writer.commit(
        counts,
        schema=ANNOTATION_SCHEMA,
        extra={"parse_status": status, "annotate_stats": stats},
        config_yaml=ctx.config_yaml(),  # holds the *name* of the key's variable, never the key
    )
