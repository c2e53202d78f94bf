"""GPU wiring, beside the model rather than inside it: flash-attn as the attention function, and a DeepSpeed
ZeRO stage-2 runner with the same interface as `train.TorchRunner`.

Imported lazily by trainer/train.py (only for engine="deepspeed" or attention="flash"), so CPU needs
neither package. phi-1.5 trained with DeepSpeed ZeRO-2 (fp16) and flash-attention; we default to bf16.

Multi-GPU: launch with `deepspeed --num_gpus N -m trainer.train TOKEN_DIR OUT_DIR --set engine=deepspeed`
(or torchrun). Every rank draws the same global window indices and takes its own slice, so the data order
is independent of the number of GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainer.model import AttentionFn, PhiModel
from trainer.recipes import Recipe


def flash_attention_fn() -> AttentionFn:
    """flash-attn 2's kernel behind the model's hook. flash-attn wants (B, T, H, D) fp16/bf16 tensors."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as e:  # pragma: no cover - GPU only
        raise RuntimeError("attention='flash' needs the flash-attn package (pip install flash-attn)") from e

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                            dropout_p=dropout_p, causal=True)       # (B, T, H, D)
        return o.transpose(1, 2)                                     # (B, H, T, D)

    return fn


def sdpa_backend_fn(backend: str) -> AttentionFn:
    """PyTorch SDPA forced onto ONE backend (errors rather than silently falling back):
    "flash" (PyTorch's FlashAttention-2 kernel), "cudnn" (cuDNN's fused attention; on Hopper it is the
    faster of the two at head dim 64), "efficient" (memory-efficient / xformers-style), "math"."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if backend not in backends:
        raise ValueError(f"unknown SDPA backend {backend!r}; known: {sorted(backends)}")
    which = backends[backend]

    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
        with sdpa_kernel(which):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

    return fn


def sdpa_flash_fn() -> AttentionFn:
    """PyTorch's own FlashAttention-2 kernel via SDPA, forced."""
    return sdpa_backend_fn("flash")


def sdpa_cudnn_fn() -> AttentionFn:
    """cuDNN's fused attention via SDPA, forced (CUDA only)."""
    return sdpa_backend_fn("cudnn")


def attention_fn_for(name: str) -> AttentionFn | None:
    """TrainConfig.attention -> the function to install in the model (None: keep the default SDPA, which lets
    PyTorch choose). "flash" = the flash-attn package; "sdpa-flash" / "sdpa-cudnn" / "sdpa-efficient" force
    one SDPA backend."""
    if name == "sdpa":
        return None
    if name == "flash":
        return flash_attention_fn()
    if name.startswith("sdpa-"):
        return sdpa_backend_fn(name[len("sdpa-"):])
    raise ValueError(f"unknown attention {name!r}: sdpa | flash | sdpa-flash | sdpa-cudnn | sdpa-efficient")


def ds_config(cfg: Any, recipe: Recipe, world_size: int) -> dict[str, Any]:
    accum = cfg.batch_size // (cfg.micro_batch_size * world_size)
    return {
        "train_batch_size": cfg.batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": recipe.grad_clip,
        # Stage 2: optimizer states and gradients sharded across ranks, parameters replicated.
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True,
                              "reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8},
        "bf16": {"enabled": cfg.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.dtype == "float16", "initial_scale_power": 16, "loss_scale_window": 1000},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedRunner:
    def __init__(self, model: PhiModel, recipe: Recipe, total_steps: int, warmup: int, cfg: Any):
        try:
            import deepspeed
        except ImportError as e:  # pragma: no cover - GPU only
            raise RuntimeError("engine='deepspeed' needs the deepspeed package (pip install deepspeed)") from e
        import torch.distributed as dist

        from trainer.train import param_groups

        if not dist.is_initialized():
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29511")
            deepspeed.init_distributed(dist_backend="nccl")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        self.recipe = recipe
        # Plain torch AdamW as the client optimizer: no compiled DeepSpeed ops needed.
        opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas,
                                eps=recipe.eps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: recipe.lr_multiplier(s, total_steps, warmup))
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds_config(cfg, recipe, self.world_size))
        self.model = self.engine.module
        self._lr = recipe.lr
        self._micro = 0

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, accum: int) -> torch.Tensor:
        if self._micro == 0:
            self._lr = self.opt.param_groups[0]["lr"]
        _, loss = self.engine(x, y)
        self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
        self.engine.step()          # optimizer/scheduler/clip/zero-grad happen only at the accumulation boundary
        self._micro = (self._micro + 1) % accum
        return loss.detach().float()

    def step(self) -> float:
        assert self.engine.is_gradient_accumulation_boundary() or self._micro == 0
        return self._lr

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(ckpt_dir), tag="ds", client_state={"client": client_state})

    def load(self, ckpt_dir: Path) -> dict[str, Any]:
        _, client = self.engine.load_checkpoint(str(ckpt_dir), tag="ds")
        return client["client"]

    def barrier(self) -> None:
        torch.distributed.barrier()

    def mean_across_ranks(self, value: float) -> float:
        t = torch.tensor([value], device="cuda")
        torch.distributed.all_reduce(t)
        return float(t) / self.world_size

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        # ZeRO-2 keeps full parameters on every rank; export them in fp32.
        return {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}
