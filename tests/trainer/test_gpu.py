"""GPU-only paths: run on a CUDA machine (e.g. a lent H100) with `pytest -m gpu tests/trainer`."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.gpu


def _need_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: flash-attn / DeepSpeed / bf16 autocast paths only run on a GPU")


def _need(pkg: str):
    if importlib.util.find_spec(pkg) is None:
        pytest.skip(f"needs the {pkg} package (pip install '.[gpu]')")


def _qkv(T=256):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(2, 4, T, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]


@pytest.mark.parametrize(
    "fn_name, package",
    [("flash_attention_fn", "flash_attn"), ("sdpa_flash_fn", None), ("sdpa_cudnn_fn", None)],
    ids=["flash-attn package", "sdpa flash backend", "sdpa cudnn backend"],
)
def test_attention_backend_matches_fp32_math(fn_name, package):
    _need_cuda()
    if package:
        _need(package)
    from trainer import engine
    from trainer.model import sdpa_attention

    q, k, v = _qkv()
    a = getattr(engine, fn_name)()(q, k, v, 0.0)
    b = sdpa_attention(q.float(), k.float(), v.float(), 0.0)
    assert (a.float() - b).abs().max().item() < 2e-2


def _tokens(tmp_path):
    import sysconfig
    from pathlib import Path

    from trainer.data import pack_documents

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = [(p.name, p.read_text(errors="replace")) for p in sorted(root.glob("*.py"))[:40]]
    pack_documents(docs, tmp_path / "tok", "smollm2", seq_len=256, val_fraction=0.1)
    return tmp_path / "tok"


def test_torch_bf16_training_step_on_gpu(tmp_path):
    _need_cuda()
    from trainer.train import TrainConfig, train_probe

    tok = _tokens(tmp_path)
    s = train_probe(tok, tmp_path / "run", TrainConfig(preset="tiny", seq_len=256, batch_size=8, micro_batch_size=4,
                                                       max_tokens=8 * 256 * 20, log_every=5))
    assert s["config"]["dtype"] == "bfloat16" and s["steps"] == 20
    assert s["final_train_loss"] < 10.0
    assert s["peak_flops"] is not None and s["mfu"] > 0  # known GPU: MFU is reported


def test_deepspeed_zero2_bf16_step(tmp_path):
    _need_cuda()
    _need("deepspeed")
    from trainer.train import TrainConfig, train_probe

    tok = _tokens(tmp_path)
    cfg = TrainConfig(preset="tiny", seq_len=256, batch_size=8, micro_batch_size=4, max_tokens=8 * 256 * 10,
                      engine="deepspeed", dtype="bfloat16", ckpt_every=5, log_every=1,
                      attention="flash" if importlib.util.find_spec("flash_attn") else "sdpa")
    s = train_probe(tok, tmp_path / "run", cfg)
    assert s["steps"] == 10 and s["final_train_loss"] < 10.9
    assert (tmp_path / "run" / "checkpoint" / "client.json").exists()


def test_torch_training_with_sdpa_cudnn_and_compile(tmp_path):
    _need_cuda()
    from trainer.train import TrainConfig, train_probe

    tok = _tokens(tmp_path)
    s = train_probe(tok, tmp_path / "run", TrainConfig(preset="tiny", seq_len=256, batch_size=8, micro_batch_size=8,
                                                       max_tokens=8 * 256 * 10, log_every=5, attention="sdpa-cudnn",
                                                       compile=True))
    assert s["steps"] == 10 and s["final_train_loss"] < 10.9
