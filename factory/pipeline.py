"""Running a pipeline: each stage reads versions and writes one new version through the store.

The context carries the latest version of each kind (dataset, annotations, classifier, tokens, scorecard) from
one stage to the next; nothing else passes between stages.  A stage whose deterministic version id already
exists in the store is a cache hit and does no work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from factory.config import PipelineConfig, Section
from factory.store import Store, Version, VersionWriter, version_id

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    stage: str
    version: Version
    cached: bool
    seconds: float


@dataclass
class StageContext:
    cfg: PipelineConfig
    store: Store
    stage: str
    latest: dict[str, Version] = field(default_factory=dict)
    history: list[StageRun] = field(default_factory=list)
    progress: bool = True

    @property
    def section(self) -> Section:
        return self.cfg.section_for(self.stage)

    def need(self, kind: str) -> Version:
        if kind not in self.latest:
            raise RuntimeError(f"stage {self.stage!r} needs a {kind} version, but no earlier stage produced one")
        return self.latest[kind]

    def version_id(self, parent: Version | None, extra: Any = None, config: Any = None) -> str:
        cfg = self.section.model_dump(mode="json") if config is None else config
        return version_id(parent.id if parent else None, self.stage, cfg, extra=extra)

    def begin(
        self,
        vid: str,
        kind: str,
        parent: Version | None,
        inputs: dict[str, str] | None = None,
        extra_header: dict[str, Any] | None = None,
    ) -> VersionWriter:
        header = {
            "kind": kind,
            "stage": self.stage,
            "parent": parent.id if parent else None,
            "inputs": inputs or {},
            "stage_config": self.section.model_dump(mode="json"),
            "pipeline": self.cfg.name,
            **(extra_header or {}),
        }
        return self.store.begin(vid, header)

    def config_yaml(self) -> str:
        return yaml.safe_dump(self.cfg.dump(), sort_keys=False)

    def cached(self, vid: str) -> Version | None:
        return self.store.get(vid) if self.store.exists(vid) else None


def run_pipeline(cfg: PipelineConfig, progress: bool = True, until: str | None = None) -> list[StageRun]:
    from factory.runtime.ray_env import init_ray
    from factory.runtime.registry import load_runners

    runners = load_runners()
    missing = [s for s in cfg.stages if s not in runners]
    if missing:
        raise RuntimeError(f"stages not available in this install: {missing}")
    store = Store(cfg.output_root)
    init_ray(cfg.ray, progress=progress)
    runs: list[StageRun] = []
    latest: dict[str, Version] = {}
    for stage in cfg.stages:
        ctx = StageContext(cfg, store, stage, latest, runs, progress)
        t0 = time.time()
        log.info("stage %s", stage)
        version, cached = runners[stage](ctx)
        latest[version.kind] = version
        if version.kind == "dataset":
            latest.setdefault("raw_dataset", version)
        runs.append(StageRun(stage, version, cached, time.time() - t0))
        if until and stage == until:
            break
    return runs


def summary_table(runs: list[StageRun], store: Store) -> str:
    head = ["stage", "version", "in", "out", "dropped", "quarantined", "time", ""]
    rows = []
    for r in runs:
        c = r.version.manifest.get("counts", {})
        rows.append(
            [
                r.stage,
                r.version.id,
                str(c.get("in", "")),
                str(c.get("out", "")),
                _reasons(c.get("dropped", {})),
                _reasons(c.get("quarantined", {})),
                f"{r.seconds:.1f}s",
                "cached" if r.cached else "",
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    lines.append(f"store: {store.root}/versions")
    return "\n".join(lines)


def _reasons(d: dict[str, int]) -> str:
    total = sum(d.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k}={v}" for k, v in sorted(d.items())) + ")"
