"""Model size presets, kept as data.

phi-1 (Gunasekar et al. 2023, "Textbooks Are All You Need") and phi-1.5 share one architecture:
decoder-only, head dim 64, rotary embedding on 32 of the 64 head dims, MLP 4x wide, context 2048,
and the codegen-mono tokenizer (we default to SmolLM2's; vocab size comes from whichever tokenizer
the token shards were made with).

    phi-1-small : 20 layers, d 1024, 16 heads  (~350M)
    phi-1       : 24 layers, d 2048, 32 heads  (~1.3B; phi-1.5 is the same shape)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int
    d_model: int
    n_head: int
    vocab_size: int = 51200          # phi-1: codegen's 50295 padded to 51200; set from the tokenizer
    max_seq_len: int = 2048          # context length (rotary tables are built for this many positions)
    rotary_dim: int = 32             # rotary on the first 32 dims of each 64-dim head (partial rotary)
    mlp_ratio: int = 4               # MLP hidden = 4 * d_model
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0             # residual + embedding dropout (phi-1 pretraining used 0.1)
    attn_dropout: float = 0.0
    init_std: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff(self) -> int:
        return self.mlp_ratio * self.d_model

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} not divisible by n_head {self.n_head}")
        if not (0 < self.rotary_dim <= self.head_dim) or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim {self.rotary_dim} must be even and <= head_dim {self.head_dim}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """`ModelConfig.from_name("tiny", vocab_size=tok.vocab_size)`; overrides any field."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        cfg = PRESETS[name]
        if "vocab_size" in overrides:
            overrides["vocab_size"] = pad_vocab(int(overrides["vocab_size"]))
        return replace(cfg, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


def pad_vocab(n: int, multiple: int = 64) -> int:
    """Round the embedding table up to a multiple of 64 so matmuls tile well (phi-1 padded to 51200)."""
    return ((n + multiple - 1) // multiple) * multiple


PRESETS: dict[str, ModelConfig] = {
    # CPU-test size: 2 layers, 2 heads of 64. Most of its parameters are the embedding and the head.
    "tiny": ModelConfig(n_layer=2, d_model=128, n_head=2, max_seq_len=256),
    # A ~25M-non-embedding step between tiny and the paper sizes, for short CPU/GPU probes.
    "small": ModelConfig(n_layer=6, d_model=512, n_head=8, max_seq_len=1024),
    "phi-1-small": ModelConfig(n_layer=20, d_model=1024, n_head=16),
    "phi-1": ModelConfig(n_layer=24, d_model=2048, n_head=32),
}
