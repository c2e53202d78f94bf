"""phi-1 in one file of plain PyTorch (nanoGPT style).

The shape follows Hugging Face's `PhiForCausalLM` exactly so `trainer/export.py` can hand the weights over
with identical logits:

    tokens -> embedding -> dropout -> N x Block -> final LayerNorm -> lm_head (untied, with bias)
    Block(x) = x + dropout(Attn(LN(x))) + dropout(MLP(LN(x)))        # ONE LayerNorm, attn and MLP in parallel

Shapes: B batch, T time (tokens), C d_model, H heads, D head dim (64), R rotary dims (32), V vocab.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.presets import ModelConfig

# An attention function takes q, k, v of shape (B, H, T, D) and returns (B, H, T, D), causal.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    # PyTorch picks the fastest kernel it has (flash / memory-efficient / math); scale defaults to 1/sqrt(D).
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # (.., R) -> (.., R): [x1, x2] -> [-x2, x1]. HF Phi's "non-interleaved" rotary convention; matching it
    # (rather than GPT-J's interleaved pairs) is what makes exported logits identical.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for rotary embedding on the first `rotary_dim` dims of each head."""

    def __init__(self, rotary_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))  # (R/2,)
        t = torch.arange(max_seq_len, dtype=torch.float)
        freqs = torch.outer(t, inv_freq)                     # (T_max, R/2)
        emb = torch.cat((freqs, freqs), dim=-1)              # (T_max, R)
        # Not persistent: they are a pure function of the config, so checkpoints stay small and portable.
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, T, D); rotate x[..., :R], pass x[..., R:] through unchanged.
        T, R = x.shape[-2], self.cos.shape[-1]
        cos = self.cos[:T].to(x.dtype)                       # (T, R), broadcasts over B, H
        sin = self.sin[:T].to(x.dtype)
        x_rot, x_pass = x[..., :R], x[..., R:]
        x_rot = x_rot * cos + rotate_half(x_rot) * sin
        return torch.cat((x_rot, x_pass), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        # One fused projection for q, k, v (one big matmul is faster than three); export splits it in thirds.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=True)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=True)
        self.rotary = Rotary(cfg.rotary_dim, cfg.max_seq_len, cfg.rope_theta)
        self.attn_dropout = cfg.attn_dropout
        # The hook: `trainer/engine.py` replaces this with flash-attn on GPU. A plain attribute, not a module.
        self.attn_fn: AttentionFn = sdpa_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)                              # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)       # (B, H, T, D)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = self.rotary(q), self.rotary(k)                               # positions enter only via q, k
        y = self.attn_fn(q, k, v, self.attn_dropout if self.training else 0.0)  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                    # (B, T, C)
        return self.out_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Phi uses "gelu_new" = GELU with the tanh approximation (GPT-2's); exact erf GELU differs at ~1e-3.
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))           # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    """Parallel block (GPT-J / Phi): one LayerNorm feeds both branches, which saves a norm and lets the two
    branches run as independent matmuls."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        return x + self.drop(self.attn(h)) + self.drop(self.mlp(h))


class PhiModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        # Untied and with a bias, as in PhiForCausalLM.
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        # HF Phi's init: N(0, 0.02) for linear and embedding weights, zero biases, LayerNorm (1, 0).
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def set_attention_fn(self, fn: AttentionFn) -> None:
        for blk in self.blocks:
            blk.attn.attn_fn = fn

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, last_only: bool = False):
        """idx, targets: (B, T) int64. Returns (logits (B, T, V), mean loss or None).
        last_only: logits for the last position only, (B, 1, V) -- generation needs nothing else, and the
        head is most of a small model's FLOPs."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens > max_seq_len {self.cfg.max_seq_len}")
        x = self.drop(self.wte(idx))                                       # (B, T, C)
        for blk in self.blocks:
            x = blk(x)
        if last_only:
            x = x[:, -1:]                                                  # (B, 1, C)
        logits = self.lm_head(self.ln_f(x))                                # (B, T, V)
        loss = None
        if targets is not None:
            # Cross-entropy in fp32 even under bf16 autocast: the softmax over ~50k logits is where
            # low precision hurts.
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    # ---- accounting, for MFU -------------------------------------------------------------------------
    def num_params(self, exclude_embedding: bool = True) -> int:
        """Parameters that cost matmul FLOPs: the input embedding is a lookup, so it is excluded by default
        (the lm_head is untied, so it still counts)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if exclude_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls (fwd 2N + bwd 4N) plus the attention scores and
        weighted sum, 6 * 2 * L * T * C (PaLM appendix B; causal masking is not discounted)."""
        c = self.cfg
        return 6.0 * self.num_params() + 12.0 * c.n_layer * seq_len * c.d_model


def build_model(cfg: ModelConfig) -> PhiModel:
    return PhiModel(cfg)


def count_params_str(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"

