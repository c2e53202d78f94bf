"""Annotate: a seeded, source-stratified sample of a dataset version, scored by an LLM through a template.

Pure logic over records; no Ray, no engine construction.  The runtime (``factory/runtime/run_annotate.py``)
samples with ``sample_positions``, builds one ``ChatRequest`` per document with ``Annotator.request``, gets
the responses from the cache or an engine, and turns them into rows with ``Annotator.rows``.

Every sampled document becomes exactly one row: ``parse_status`` is ``ok`` (a score in the template's
range), ``unparsed`` (the reply is kept in ``raw_reply``, ``score`` is null) or ``error`` (the engine failed
on this item; the message goes to the ``errors`` side table).  Nothing is dropped except, in a partial
version cut short by a budget, the documents that were never sent (``dropped.budget_exhausted``).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from factory.config import AnnotateConfig
from factory.engines.base import ChatRequest, ChatResponse
from factory.engines.cache import cache_key
from factory.prompts import PromptTemplate
from factory.stages.base import ShardResult
from factory.store import BASE_SCHEMA

ANNOTATION_SCHEMA = pa.schema(
    list(BASE_SCHEMA)
    + [
        pa.field("score", pa.float64()),
        pa.field("expected_score", pa.float64()),
        pa.field("raw_reply", pa.string()),
        pa.field("parse_status", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("model", pa.string()),
        pa.field("template_id", pa.string()),
        pa.field("template_hash", pa.string()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("latency_s", pa.float64()),
    ]
)
ERRORS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("error", pa.string())])
PARSE_STATUSES = ("ok", "unparsed", "error")


# --------------------------------------------------------------------------------------------- sampling
def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional allocation of n over strata (largest remainder), at least one per stratum when n allows."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    keys = sorted(sizes)
    alloc = {k: 0 for k in keys}
    if n >= len(keys):
        for k in keys:
            alloc[k] = 1 if sizes[k] else 0
    remaining = n - sum(alloc.values())
    while remaining > 0:
        room = {k: sizes[k] - alloc[k] for k in keys if sizes[k] - alloc[k] > 0}
        room_total = sum(room.values())
        quotas = {k: remaining * room[k] / room_total for k in room}
        floors = {k: min(room[k], int(q)) for k, q in quotas.items()}
        given = sum(floors.values())
        if given == 0:  # hand out by largest remainder, ties by name
            order = sorted(room, key=lambda k: (-(quotas[k] - int(quotas[k])), k))
            for k in order[:remaining]:
                floors[k] = 1
            given = min(remaining, len(order))
        for k, v in floors.items():
            alloc[k] += v
        remaining -= given
    return alloc


def sample_positions(ids: list[str], strata: list[str] | None, n: int, seed: int) -> list[int]:
    """Positions of a seeded sample of n rows, stratified when strata are given; sorted by (stratum, id).

    Deterministic for the same rows whatever their order in the input: each stratum is ordered by id
    before a seeded permutation picks from it.
    """
    strata = strata if strata is not None else [""] * len(ids)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(strata):
        groups.setdefault(s if s is not None else "", []).append(i)
    alloc = allocate({k: len(v) for k, v in groups.items()}, n)
    picked: list[int] = []
    for k in sorted(groups):
        members = sorted(groups[k], key=lambda i: ids[i])
        rng = np.random.default_rng([seed, zlib.crc32(k.encode("utf-8", "surrogatepass"))])
        take = rng.permutation(len(members))[: alloc[k]]
        picked += sorted((members[j] for j in take), key=lambda i: ids[i])
    return picked


def sample_table(table: pa.Table, cfg: AnnotateConfig) -> list[int]:
    ids = table.column("id").to_pylist()
    strata = None
    if cfg.stratify_by:
        if cfg.stratify_by not in table.column_names:
            raise ValueError(f"annotate.stratify_by={cfg.stratify_by!r} is not a column ({table.column_names})")
        strata = [str(v) if v is not None else "" for v in table.column(cfg.stratify_by).to_pylist()]
    return sample_positions(ids, strata, cfg.sample_size, cfg.seed)


def truncate(text: str, max_chars: int) -> str:
    """At most max_chars, cut at the last line break in the final fifth when there is one."""
    if text is None:
        return ""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    nl = cut.rfind("\n")
    return cut[: nl + 1] if nl >= int(max_chars * 0.8) else cut


# --------------------------------------------------------------------------------------------- annotating
@dataclass
class Annotator:
    cfg: AnnotateConfig
    template: PromptTemplate
    identity: dict[str, Any]  # the engine's identity (kind, model, file...): part of every cache key

    @property
    def template_info(self) -> dict[str, str]:
        return {"id": self.template.id, "hash": self.template.hash}

    def request(self, doc: dict[str, Any]) -> ChatRequest:
        available = {
            "text": truncate(doc.get("text") or "", self.cfg.max_doc_chars),
            "source": doc.get("source") or "",
            "id": doc.get("id"),
        }
        missing = [v for v in self.template.variables if v not in available]
        if missing:
            raise ValueError(f"template {self.template.id} needs variables the annotate stage does not have: {missing}")
        messages = self.template.render(**{v: available[v] for v in self.template.variables})
        out = self.template.output
        choices = list(out.choices) if (self.cfg.output == "choice" and out.choices) else None
        schema = out.json_schema if (self.cfg.output == "json" and out.json_schema) else None
        if self.cfg.output == "choice" and not choices and out.json_schema:
            schema = out.json_schema  # a template without a choice list still gets constrained output
        req = ChatRequest(
            key="",
            messages=messages,
            max_tokens=self.cfg.max_tokens,
            temperature=self.cfg.temperature,
            seed=self.cfg.seed,
            choices=choices,
            json_schema=schema,
            logprobs=self.cfg.logprobs if choices else 0,
        )
        req.key = cache_key(self.identity, self.template_info, req)
        return req

    def row(self, doc: dict[str, Any], resp: ChatResponse | None) -> tuple[dict[str, Any], str | None]:
        base = {
            "id": doc["id"],
            "text": doc.get("text"),
            "source": doc.get("source"),
            "meta": doc.get("meta"),
            "engine": self.identity.get("kind"),
            "model": self.identity.get("model"),
            "template_id": self.template.id,
            "template_hash": self.template.hash,
        }
        if resp is None or resp.error is not None:
            err = "no response" if resp is None else resp.error
            base.update(
                score=None, expected_score=None, raw_reply=None, parse_status="error",
                prompt_tokens=int(resp.prompt_tokens) if resp else 0,
                completion_tokens=int(resp.completion_tokens) if resp else 0,
                latency_s=float(resp.latency_s) if resp else 0.0,
            )
            return base, err
        parsed = self.template.parse(resp.text)
        exp = resp.expected
        base.update(
            score=parsed.score,
            expected_score=float(exp) if exp is not None and np.isfinite(exp) else None,
            raw_reply=resp.text,
            parse_status=parsed.status,
            prompt_tokens=int(resp.prompt_tokens),
            completion_tokens=int(resp.completion_tokens),
            latency_s=float(resp.latency_s),
        )
        return base, None

    def shard(self, docs: list[dict[str, Any]], responses: dict[str, ChatResponse], keys: list[str]) -> ShardResult:
        """Rows for docs (keys[i] is docs[i]'s request key); every doc is one out row."""
        rows, errors = [], []
        for doc, key in zip(docs, keys):
            row, err = self.row(doc, responses.get(key))
            rows.append(row)
            if err is not None:
                errors.append({"id": doc["id"], "error": err[:500]})
        table = pa.Table.from_pylist(rows, schema=ANNOTATION_SCHEMA)
        side = {"errors": pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA)} if errors else {}
        return ShardResult(table=table, n_in=len(docs), side=side)


def status_counts(table: pa.Table) -> dict[str, int]:
    c = Counter(table.column("parse_status").to_pylist()) if table.num_rows else Counter()
    return {s: int(c.get(s, 0)) for s in PARSE_STATUSES}


def meta_json(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)
