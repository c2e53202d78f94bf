from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.export import export_hf
from trainer.model import PhiModel, Rotary
from trainer.presets import ModelConfig


def _perturbed_tiny(vocab: int = 1000) -> PhiModel:
    torch.manual_seed(0)
    m = PhiModel(ModelConfig.from_name("tiny", vocab_size=vocab)).eval()
    with torch.no_grad():  # make biases / LayerNorms non-trivial so the mapping of every tensor is tested
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_export_matches_hf_phi_logits(tmp_path):
    from transformers import PhiForCausalLM

    m = _perturbed_tiny()
    export_hf(m, tmp_path, eos_id=0)
    hf = PhiForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = torch.randint(0, 1000, (2, 200))
    with torch.no_grad():
        ours, _ = m(x)
        theirs = hf(x).logits
    assert ours.shape == theirs.shape == (2, 200, 1024)  # vocab padded to a multiple of 64
    assert (ours - theirs).abs().max().item() < 1e-4


def test_partial_rotary_only_touches_first_32_dims():
    rot = Rotary(rotary_dim=32, max_seq_len=16, theta=10000.0)
    x = torch.randn(1, 2, 16, 64)
    y = rot(x)
    assert torch.equal(y[..., 32:], x[..., 32:])
    assert torch.allclose(y[:, :, 0], x[:, :, 0])                 # position 0: identity
    assert not torch.allclose(y[:, :, 5, :32], x[:, :, 5, :32])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation


def test_attention_hook_is_used_and_sdpa_matches_eager():
    m = _perturbed_tiny()
    x = torch.randint(0, 1000, (2, 50))
    calls = []

    def eager(q, k, v, p):
        calls.append(q.shape)
        T = q.shape[-2]
        att = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return F.softmax(att, -1) @ v

    with torch.no_grad():
        a, _ = m(x)
        m.set_attention_fn(eager)
        b, _ = m(x)
    assert calls and calls[0] == (2, 2, 50, 64)  # (B, H, T, D): two heads of 64
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("name,lo,hi", [("phi-1-small", 330e6, 370e6), ("phi-1", 1.3e9, 1.45e9)])
def test_paper_presets_have_paper_sizes(name, lo, hi):
    cfg = ModelConfig.from_name(name, vocab_size=50295)  # codegen-mono's tokenizer, padded to 50304
    assert cfg.head_dim == 64 and cfg.rotary_dim == 32 and cfg.d_ff == 4 * cfg.d_model and cfg.max_seq_len == 2048
    with torch.device("meta"):
        m = PhiModel(cfg)
    assert lo < m.num_params(exclude_embedding=False) < hi


def test_loss_and_last_only_logits():
    m = _perturbed_tiny()
    x = torch.randint(0, 1000, (2, 20))
    with torch.no_grad():
        full, loss = m(x, x)
        last, _ = m(x, last_only=True)
    assert loss.ndim == 0 and torch.allclose(full[:, -1:], last, atol=1e-5)


def test_attention_fn_for_names():
    from trainer.engine import attention_fn_for

    assert attention_fn_for("sdpa") is None
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(attention_fn_for("sdpa-math")(q, k, v, 0.0), ref, atol=1e-6)
    with pytest.raises(ValueError):
        attention_fn_for("nope")
    with pytest.raises(ValueError):
        attention_fn_for("sdpa-nope")
