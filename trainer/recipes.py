"""The two seed recipes as data, and their scaled-down probe defaults.

phi-1 pretraining (Gunasekar et al. 2023, sec. 2.3): AdamW, linear warmup then linear decay, attention and
residual dropout 0.1, effective batch 1024 x 2048 tokens, max lr 1e-3, warmup 750 of 36,000 steps,
weight decay 0.1. (Adam betas are not stated; we use (0.9, 0.95), the usual LLM choice.)

phi-1.5 (Li et al. 2023, sec. 2): constant lr 2e-4, no warmup, weight decay 0.1, Adam betas (0.9, 0.98),
eps 1e-7, fp16 with DeepSpeed ZeRO stage 2, batch 2048 x 2048. (Dropout is not stated: we keep phi-1's 0.1.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Recipe:
    name: str
    lr: float
    schedule: str                  # "linear": warmup then linear decay to min_lr_ratio * lr; "constant"
    warmup_steps: int              # at paper scale
    paper_total_steps: int         # the paper's run length, to scale warmup to a shorter probe
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    dropout: float
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.0
    paper_batch_size: int = 1024   # sequences per optimizer step in the paper
    paper_seq_len: int = 2048

    def warmup_for(self, total_steps: int) -> int:
        """Keep warmup the same FRACTION of training as in the paper (750/36000 ~ 2%) for short probes,
        never more steps than the paper used."""
        if self.warmup_steps == 0:
            return 0
        frac = self.warmup_steps / self.paper_total_steps
        return max(1, min(self.warmup_steps, round(frac * total_steps)))

    def lr_multiplier(self, step: int, total_steps: int, warmup: int) -> float:
        """LR factor for optimizer step `step` (0-based)."""
        if self.schedule == "constant":
            return 1.0
        if self.schedule != "linear":
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if step < warmup:
            return (step + 1) / warmup
        decay_steps = max(1, total_steps - warmup)
        frac = min(1.0, (step - warmup) / decay_steps)
        return 1.0 - (1.0 - self.min_lr_ratio) * frac

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "phi-1": Recipe(name="phi-1", lr=1e-3, schedule="linear", warmup_steps=750, paper_total_steps=36_000,
                    betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, dropout=0.1),
    "phi-1.5": Recipe(name="phi-1.5", lr=2e-4, schedule="constant", warmup_steps=0, paper_total_steps=0,
                      betas=(0.9, 0.98), eps=1e-7, weight_decay=0.1, dropout=0.1, paper_batch_size=2048),
}


@dataclass(frozen=True)
class ProbeShape:
    """How big a step a probe of this preset takes by default (paper batch scaled down with model size)."""
    seq_len: int
    batch_size: int        # sequences per optimizer step (effective, after gradient accumulation)
    micro_batch_size: int  # sequences per forward/backward


PROBE_SHAPES: dict[str, ProbeShape] = {
    "tiny": ProbeShape(seq_len=128, batch_size=16, micro_batch_size=8),           # 2k tokens / step
    "small": ProbeShape(seq_len=512, batch_size=64, micro_batch_size=16),         # 32k tokens / step
    "phi-1-small": ProbeShape(seq_len=2048, batch_size=256, micro_batch_size=8),  # 0.5M tokens / step
    "phi-1": ProbeShape(seq_len=2048, batch_size=1024, micro_batch_size=8),       # paper: 2M tokens / step
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name]
