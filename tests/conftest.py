"""Shared fixtures.  One local Ray per test session: starting one costs ~5 s and an idle one ~770 MB."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray shared by every test that asks for it; tests that need their own cluster don't."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    # left running for the rest of the session; pytest's exit shuts it down


@pytest.fixture
def python_exe() -> str:
    return sys.executable


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU (flash-attn / DeepSpeed path); this machine has none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
