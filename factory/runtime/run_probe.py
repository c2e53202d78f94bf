"""Pack a dataset version into token shards, and train probes on it: the stages that prove a version's worth.

`pack` writes a version of kind "tokens" (the token shards are its artifacts).  `probe` trains the configured
preset for every seed on the latest tokens version and, when `probe.compare_unfiltered` is on, on the dataset
as it was before scoring and filtering, with the same token budget; it writes one version of kind "scorecard"
holding every scorecard and the comparison table.

Both run as one Ray task each, so on a cluster they land on a worker (ask for a GPU with `probe.num_gpus`);
the trainer itself never imports ray.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from factory.pipeline import StageContext
from factory.runtime.registry import runner
from factory.store import Version

PRE_FILTER_STAGES = ("score", "filter")


def _remote(fn, *args, num_gpus: float = 0):
    import ray

    return ray.get(ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=1)(fn).remote(*args))


def _pack_task(files: list[str], out_dir: str, tokenizer: str, seq_len: int, val_fraction: float, seed: int):
    from trainer.data import pack_parquet_files

    return pack_parquet_files(files, out_dir, tokenizer=tokenizer, seq_len=seq_len, val_fraction=val_fraction, seed=seed)


def pack_version(ctx: StageContext, dataset: Version) -> tuple[Version, bool]:
    pctx = StageContext(ctx.cfg, ctx.store, "pack", ctx.latest, ctx.history, ctx.progress)
    cfg = ctx.cfg.pack
    vid = pctx.version_id(dataset)
    hit = pctx.cached(vid)
    if hit:
        return hit, True
    writer = pctx.begin(vid, "tokens", dataset)
    out = writer.artifacts() / "tokens"
    files = [str(f) for f in dataset.data_files()]
    meta = _remote(_pack_task, files, str(out), cfg.tokenizer or "smollm2", cfg.seq_len, cfg.val_fraction, cfg.seed)
    splits = meta["splits"]
    docs = sum(s["docs"] for s in splits.values())
    counts = {"in": dataset.num_rows, "out": docs, "dropped": {}, "quarantined": {}}
    if meta.get("skipped_empty_docs"):
        counts["dropped"]["empty_text"] = meta["skipped_empty_docs"]
    extra = {"tokens": {s: v["tokens"] for s, v in splits.items()}, "tokenizer": meta["tokenizer"]}
    return writer.commit(counts, extra=extra, config_yaml=pctx.config_yaml()), False


@runner("pack")
def run_pack(ctx: StageContext):
    return pack_version(ctx, ctx.need("dataset"))


def unfiltered_of(ctx: StageContext, dataset: Version) -> Version | None:
    """The dataset as it was before the first score/filter stage (phi-1's 'unfiltered' baseline), or None."""
    chain = ctx.store.lineage(dataset.id)  # newest first
    pre = [v for v in chain if v.stage in PRE_FILTER_STAGES]
    return ctx.store.get(pre[-1].parent) if pre and pre[-1].parent else None


def without_synthetic_of(ctx: StageContext, dataset: Version) -> Version | None:
    """The dataset as it was before synthetic rows were added (phi-1's 'filtered, no textbooks'), or None."""
    syn = next((v for v in ctx.store.lineage(dataset.id) if v.stage == "synthesize"), None)
    return ctx.store.get(syn.parent) if syn and syn.parent else None


def probe_targets(ctx: StageContext, tokens: Version) -> list[tuple[str, Version]]:
    """(label, tokens version) pairs: the version under test first, then its baselines at the same budget,
    as phi-1's Figure 2.1 compares unfiltered, filtered, and filtered + synthetic data."""
    dataset = ctx.store.get(tokens.parent)
    no_syn = without_synthetic_of(ctx, dataset)
    unfiltered = unfiltered_of(ctx, dataset)
    if not ctx.cfg.probe.compare_unfiltered or (no_syn is None and unfiltered is None):
        return [("", tokens)]
    targets = [("filtered+synthetic" if no_syn and unfiltered else "with synthetic" if no_syn else "filtered", tokens)]
    if no_syn is not None:
        targets.append(("filtered" if unfiltered else "without synthetic", pack_version(ctx, no_syn)[0]))
    if unfiltered is not None:
        targets.append(("unfiltered", pack_version(ctx, unfiltered)[0]))
    return targets


def _probe_task(version_id: str, lineage: list[dict[str, Any]], token_dir: str, out_root: str, probe: dict) -> list[str]:
    from trainer.evaluate import EvalConfig
    from trainer.probe import ProbeConfig, run_probe
    from trainer.train import TrainConfig

    train = TrainConfig(
        preset=probe["preset"],
        recipe=probe["recipe"],
        max_tokens=probe["max_tokens"],
        micro_batch_size=probe["micro_batch_size"],
        device=probe["device"],
    )
    ev = EvalConfig(humaneval_problems=probe["humaneval_problems"], max_new_tokens=probe["max_new_tokens"])
    paths = run_probe(version_id, lineage, token_dir, out_root, ProbeConfig(train, ev, list(probe["seeds"])), verbose=False)
    return [str(p) for p in paths]


@runner("probe")
def run_probe_stage(ctx: StageContext):
    from trainer.scorecard import compare_scorecards

    cfg = ctx.cfg.probe
    tokens = ctx.need("tokens")
    targets = probe_targets(ctx, tokens)
    baselines = [t for _, t in targets[1:]]
    vid = ctx.version_id(tokens, extra={"baseline": [t.id for t in baselines]})
    hit = ctx.cached(vid)
    if hit:
        return hit, True
    inputs = {"baseline_tokens": baselines[0].id} if baselines else {}
    if len(baselines) > 1:
        inputs["baseline_tokens_2"] = baselines[1].id
    writer = ctx.begin(vid, "scorecard", tokens, inputs=inputs)
    out_root = writer.artifacts()
    cards: list[str] = []
    labels = {}
    for label, t in targets:
        dataset_id = t.parent
        labels[dataset_id] = label
        lineage = ctx.store.ancestry(t.id)
        token_dir = str(t.artifacts() / "tokens")
        cards += _remote(_probe_task, dataset_id, lineage, token_dir, str(out_root), cfg.model_dump(), num_gpus=cfg.num_gpus)
    for ckpt in [p for p in out_root.rglob("checkpoint") if p.is_dir()]:
        shutil.rmtree(ckpt)  # resume state (optimizer moments: 2x the model) is useless once a probe finished
    report = compare_scorecards(cards)
    legend = ", ".join(f"{k} = {v}" for k, v in labels.items() if v)
    report = f"probe comparison ({cfg.preset}, {cfg.max_tokens} training tokens each{'; ' + legend if legend else ''}):\n{report}"
    (out_root / "comparison.txt").write_text(report + "\n")
    counts = {"in": len(cards), "out": len(cards), "dropped": {}, "quarantined": {}}
    extra = {"report": report, "scorecards": [str(Path(c).relative_to(out_root)) for c in cards]}
    return writer.commit(counts, extra=extra, config_yaml=ctx.config_yaml()), False


def scorecards_of(version: Version) -> list[dict[str, Any]]:
    base = version.path / "artifacts"
    return [json.loads((base / rel).read_text()) for rel in version.manifest.get("scorecards", [])]
