"""Scorecards: one JSON per (dataset version, probe preset, seed), and a comparison table across versions.

    path = write_scorecard(out_dir, "v5", lineage, "tiny", 0, train_result, eval_result)
    print(compare_scorecards([...paths...]))

A difference between two versions is called real only when |delta mean| >= the combined std over seeds
(sqrt(s1^2 + s2^2)) and both have >= 2 seeds; otherwise the table says "within noise".
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

SCHEMA = "textbook-factory/scorecard-v1"
# metric -> (scorecard key path, higher is better)
METRICS: dict[str, tuple[tuple[str, ...], bool]] = {
    "val_loss": (("val_loss",), False),
    "ref_loss": (("ref_loss",), False),
    "pass@1": (("pass_at_k", "pass@1"), True),
}


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


def scorecard_dict(version_id: str, lineage: list[dict[str, Any]], preset: str, seed: int,
                   train_result: dict[str, Any], eval_result: dict[str, Any],
                   extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "dataset_version": version_id,
        "lineage": lineage,
        "probe_preset": preset,
        "seed": seed,
        "training_tokens": train_result.get("tokens"),
        "final_train_loss": train_result.get("final_train_loss"),
        "val_loss": eval_result.get("val_loss"),
        "ref_loss": eval_result.get("ref_loss"),
        "ref_set": eval_result.get("ref_set"),
        "pass_at_k": eval_result.get("pass_at_k", {}),
        "humaneval": eval_result.get("humaneval"),
        "tokens_per_s": train_result.get("tokens_per_s"),
        "mfu": train_result.get("mfu"),
        "config": {
            "train": train_result.get("config"),
            "recipe": train_result.get("recipe"),
            "model": train_result.get("model_config"),
            "eval": eval_result.get("eval_config"),
            "tokenizer": train_result.get("tokenizer"),
        },
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def write_scorecard(out_dir: str | Path, version_id: str, lineage: list[dict[str, Any]], preset: str, seed: int,
                    train_result: dict[str, Any], eval_result: dict[str, Any],
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Write `out_dir/<version>__<preset>__seed<seed>.json`; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_safe(version_id)}__{_safe(preset)}__seed{seed}.json"
    card = scorecard_dict(version_id, lineage, preset, seed, train_result, eval_result, extra)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2))
    tmp.replace(path)
    return path


def _get(card: dict[str, Any], keys: tuple[str, ...]) -> Optional[float]:
    v: Any = card
    for k in keys:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return None if v is None else float(v)


def _stats(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) >= 2 else None)


def compare_rows(cards: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group scorecards by (dataset version, preset): n seeds, mean/std per metric, and per metric a verdict
    against the best row of the same preset ("best", "better"/"worse" by delta, or "within noise")."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cards:
        groups.setdefault((c["dataset_version"], c["probe_preset"]), []).append(c)
    rows = []
    for (version, preset), cs in groups.items():
        row: dict[str, Any] = {"version": version, "preset": preset, "n_seeds": len({c["seed"] for c in cs}),
                               "tokens": sorted({c.get("training_tokens") for c in cs}, key=str)}
        for m, (keys, _) in METRICS.items():
            vals = [v for v in (_get(c, keys) for c in cs) if v is not None and math.isfinite(v)]
            row[m] = _stats(vals)
            row[m + "_n"] = len(vals)
        rows.append(row)
    for m, (_, higher) in METRICS.items():
        for preset in {r["preset"] for r in rows}:
            same = [r for r in rows if r["preset"] == preset and r[m][0] is not None]
            if not same:
                continue
            best = (max if higher else min)(same, key=lambda r: r[m][0])
            for r in same:
                r[m + "_verdict"] = verdict(best, r, m)
    rows.sort(key=lambda r: (r["preset"], r["val_loss"][0] if r["val_loss"][0] is not None else math.inf))
    return rows


def verdict(best: dict[str, Any], row: dict[str, Any], m: str) -> str:
    if row is best:
        return "best"
    (mb, sb), (mr, sr) = best[m], row[m]
    delta = mr - mb
    if best[m + "_n"] < 2 or row[m + "_n"] < 2 or sb is None or sr is None:
        return f"{delta:+.3f} within noise (<2 seeds)"
    if delta == 0 or abs(delta) < math.sqrt(sb ** 2 + sr ** 2):  # a tie is no difference, even at zero spread
        return f"{delta:+.3f} within noise"
    return f"{delta:+.3f}"


def _fmt(ms: tuple[Optional[float], Optional[float]], digits: int = 3) -> str:
    m, s = ms
    if m is None:
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None else f"{m:.{digits}f}"


def compare_scorecards(paths: Iterable[str | Path]) -> str:
    """A plain-text table: rows = dataset versions (per preset), mean ± std over seeds, verdict vs best."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    cards = [json.loads(f.read_text()) for f in files]
    cards = [c for c in cards if c.get("schema") == SCHEMA]
    if not cards:
        return "no scorecards"
    rows = compare_rows(cards)
    head = ["version", "preset", "seeds", "tokens", "val_loss", "ref_loss", "pass@1",
            "val vs best", "ref vs best", "pass@1 vs best"]
    table = [head]
    for r in rows:
        toks = "/".join(f"{t:,}" if isinstance(t, int) else str(t) for t in r["tokens"])
        table.append([r["version"], r["preset"], str(r["n_seeds"]), toks, _fmt(r["val_loss"]), _fmt(r["ref_loss"]),
                      _fmt(r["pass@1"]), r.get("val_loss_verdict", "-"), r.get("ref_loss_verdict", "-"),
                      r.get("pass@1_verdict", "-")])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    budgets = {(r["preset"], tuple(map(str, r["tokens"]))) for r in rows}
    if len({p for p, _ in budgets}) < len(budgets):
        lines.append("WARNING: rows of the same preset were trained on different token budgets")
    return "\n".join(lines)
