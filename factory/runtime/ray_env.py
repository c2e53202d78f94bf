"""Starting or attaching to Ray: the only place the pipeline decides where it runs."""

from __future__ import annotations

import logging
import os

from factory.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig, progress: bool = True) -> dict:
    """No address: an embedded local Ray.  An address (config, or RAY_ADDRESS as set inside a Ray Job): attach."""
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = {"log_to_driver": cfg.log_to_driver, "ignore_reinit_error": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            obj = cfg.object_store_memory_mb * 2**20 if cfg.object_store_memory_mb else None
            # "local": a fresh embedded instance even when a `ray start` cluster runs on this machine (a bare
            # ray.init() would attach to it through /tmp/ray/ray_current_cluster and then refuse num_cpus)
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                object_store_memory=obj,
                include_dashboard=False,
                **kwargs,
            )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.print_on_execution_start = False
    return ray.cluster_resources()


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
