"""Export a `PhiModel` to a directory `transformers.PhiForCausalLM.from_pretrained` loads with the same logits.

Writes config.json (PhiConfig fields) + model.safetensors. Our fused `qkv` is split into HF's q/k/v_proj.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file

from trainer.model import PhiModel


def hf_config(model: PhiModel, eos_id: Optional[int] = None, bos_id: Optional[int] = None) -> dict[str, Any]:
    c = model.cfg
    factor = c.rotary_dim / c.head_dim
    return {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_head,
        "hidden_act": "gelu_new",
        "max_position_embeddings": c.max_seq_len,
        "layer_norm_eps": c.layer_norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attention_dropout": c.attn_dropout,
        "initializer_range": c.init_std,
        "tie_word_embeddings": False,
        "qk_layernorm": False,
        # transformers >= 5 reads rope_parameters; 4.x reads the two flat keys.
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": factor},
        "rope_theta": c.rope_theta,
        "partial_rotary_factor": factor,
        "bos_token_id": bos_id if bos_id is not None else eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def to_hf_state_dict(model: PhiModel) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    C = model.cfg.d_model
    out = {
        "model.embed_tokens.weight": sd["wte.weight"],
        "model.final_layernorm.weight": sd["ln_f.weight"],
        "model.final_layernorm.bias": sd["ln_f.bias"],
        "lm_head.weight": sd["lm_head.weight"],
        "lm_head.bias": sd["lm_head.bias"],
    }
    for i in range(model.cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "ln.weight"]
        out[dst + "input_layernorm.bias"] = sd[src + "ln.bias"]
        w, b = sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"]            # (3C, C), (3C,)
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[dst + f"self_attn.{name}.weight"] = w[j * C:(j + 1) * C].clone()
            out[dst + f"self_attn.{name}.bias"] = b[j * C:(j + 1) * C].clone()
        out[dst + "self_attn.dense.weight"] = sd[src + "attn.out_proj.weight"]
        out[dst + "self_attn.dense.bias"] = sd[src + "attn.out_proj.bias"]
        for name in ("fc1", "fc2"):
            out[dst + f"mlp.{name}.weight"] = sd[src + f"mlp.{name}.weight"]
            out[dst + f"mlp.{name}.bias"] = sd[src + f"mlp.{name}.bias"]
    return out


def export_hf(model: PhiModel, out_dir: str | Path, eos_id: Optional[int] = None,
              tokenizer_dir: Optional[str | Path] = None) -> Path:
    """Write `out_dir/config.json` + `out_dir/model.safetensors` (fp32). If `tokenizer_dir` is given, its
    files are copied beside them so the directory is self-contained for `AutoTokenizer` too."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config(model, eos_id=eos_id), indent=2))
    tensors = {k: v.float() for k, v in to_hf_state_dict(model).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        import shutil
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
    return out
