"""One call for the CLI / pipeline: train + evaluate a probe per seed on one dataset version, write scorecards.

    cfg = load_probe_config("trainer/configs/probe_phi1.yaml")
    paths = run_probe("v5", lineage, token_dir, "factory-data/probes", cfg)
    print(compare_scorecards(paths_of_all_versions))
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from trainer.evaluate import EvalConfig, evaluate_probe
from trainer.scorecard import write_scorecard
from trainer.train import TrainConfig, train_probe


@dataclass
class ProbeConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0])


def load_probe_config(path: str | Path, train_overrides: Optional[dict[str, Any]] = None) -> ProbeConfig:
    """Read a pipelines/probe_*.yaml (keys: train, eval, seeds)."""
    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    tr = TrainConfig.from_dict({**d.get("train", {}), **(train_overrides or {})})
    ev = dict(d.get("eval", {}))
    if "ks" in ev:
        ev["ks"] = tuple(ev["ks"])
    return ProbeConfig(train=tr, eval=EvalConfig(**ev), seeds=list(d.get("seeds", [0])))


def run_probe(version_id: str, lineage: list[dict[str, Any]], token_dir: str | Path, out_root: str | Path,
              cfg: ProbeConfig, verbose: bool = True) -> list[Path]:
    """For each seed: train under out_root/<version>/<preset>/seed<k>/ (resumes if interrupted), evaluate,
    and write a scorecard to out_root/scorecards/. Returns the scorecard paths."""
    out_root = Path(out_root)
    paths = []
    for seed in cfg.seeds:
        tcfg = replace(cfg.train, seed=seed)
        run_dir = out_root / version_id / tcfg.preset / f"seed{seed}"
        train_res = train_probe(token_dir, run_dir, tcfg, verbose=verbose)
        eval_res = evaluate_probe(run_dir, token_dir, replace(cfg.eval, seed=seed))
        paths.append(write_scorecard(out_root / "scorecards", version_id, lineage, tcfg.preset, seed,
                                     train_res, eval_res, extra={"run_dir": str(run_dir)}))
    return paths
