"""`factory probe train VERSION` and `factory probe compare V1 V2 ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("probe", help="train probe models on dataset versions and compare their scorecards")
    ps = p.add_subparsers(dest="probe_action", required=True)

    t = ps.add_parser("train", help="pack a dataset version and train the probe on it (every seed)")
    t.add_argument("version", help="a dataset (or tokens) version id, prefix or hash suffix")
    t.add_argument("--config", help="pipeline YAML whose pack/probe sections to use (default: built-in defaults)")
    t.add_argument("--root", help="store root (default: the config's output_root)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set probe.preset=tiny --set probe.max_tokens=100000 --set 'probe.seeds=[0,1]'")
    t.set_defaults(fn=cmd_train)

    c = ps.add_parser("compare", help="a table of scorecards per dataset version, with the spread across seeds")
    c.add_argument("versions", nargs="+", help="dataset, tokens or scorecard version ids")
    c.add_argument("--root", help="store root (default: $FACTORY_ROOT or ./factory-data)")
    c.set_defaults(fn=cmd_compare)


def main(args: argparse.Namespace) -> int:
    return args.fn(args)


def _context(args: argparse.Namespace):
    from factory.config import load_config
    from factory.pipeline import StageContext
    from factory.store import Store

    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"output_root={args.root}")
    cfg = load_config(args.config, overrides)
    store = Store(cfg.output_root)
    return cfg, store, StageContext


def cmd_train(args: argparse.Namespace) -> int:
    from factory.runtime.ray_env import init_ray
    from factory.runtime.run_probe import pack_version, run_probe_stage

    cfg, store, StageContext = _context(args)
    version = store.get(args.version)
    init_ray(cfg.ray)
    latest = {}
    if version.kind == "dataset":
        ctx = StageContext(cfg, store, "pack", latest)
        latest["tokens"], _ = pack_version(ctx, version)
    elif version.kind == "tokens":
        latest["tokens"] = version
    else:
        print(f"error: {version.id} is a {version.kind} version; probe a dataset or tokens version", file=sys.stderr)
        return 1
    ctx = StageContext(cfg, store, "probe", latest)
    result, cached = run_probe_stage(ctx)
    print(result.manifest.get("report", ""))
    print(f"\nscorecards: {result.path / 'artifacts' / 'scorecards'}{'  (cached)' if cached else ''}")
    return 0


def _scorecard_files(store, ref: str) -> list[Path]:
    """Scorecards of a version: its own (a scorecard version) or those of every scorecard version about it."""
    v = store.get(ref)
    if v.kind == "scorecard":
        return [v.path / "artifacts" / rel for rel in v.manifest.get("scorecards", [])]
    files: list[Path] = []
    for s in store.list():
        if s.kind != "scorecard":
            continue
        for rel in s.manifest.get("scorecards", []):
            p = s.path / "artifacts" / rel
            card = json.loads(p.read_text())
            if card.get("dataset_version") == v.id or any(r.get("id") == v.id for r in card.get("lineage", [])[:1]):
                files.append(p)
    return files


def cmd_compare(args: argparse.Namespace) -> int:
    import os

    from factory.store import Store
    from trainer.scorecard import compare_scorecards

    store = Store(args.root or os.environ.get("FACTORY_ROOT", "./factory-data"))
    files: list[Path] = []
    missing = []
    for ref in args.versions:
        found = _scorecard_files(store, ref)
        if not found:
            missing.append(ref)
        files += found
    if missing:
        print(f"error: no scorecards for {', '.join(missing)}; run `factory probe train VERSION` first", file=sys.stderr)
        return 1
    seen: dict[str, Path] = {}
    for f in files:  # the same (version, preset, seed) may sit in several scorecard versions: keep one
        seen.setdefault(f.name, f)
    print(compare_scorecards(list(seen.values())))
    return 0
