"""One training loop for probe models.

    train_probe(token_dir, out_dir, TrainConfig(preset="tiny", max_tokens=2_000_000, seed=0)) -> summary dict

Same loop on CPU and GPU; the only thing that changes is the *runner* that owns model + optimizer:
`TorchRunner` (here; plain PyTorch, optional bf16 autocast on CUDA) or `DeepSpeedRunner` (trainer/engine.py,
imported only when asked for).

Exact resume: a checkpoint holds model, optimizer, LR scheduler, all RNG states (python, numpy, torch,
cuda) and the data position (epoch, cursor into the seeded window permutation). Restarting from it
replays the same batches, dropout masks and updates, so the per-step losses equal an uninterrupted run.
Checkpoints are written to a temp dir and swapped in with a rename, so a SIGKILL mid-save leaves the
previous one intact. `metrics.jsonl` gets one line per step; on resume, lines past the checkpoint are cut.

Stand-alone: python -m trainer.train TOKEN_DIR OUT_DIR [--config pipelines/probe_tiny.yaml] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainer.data import SamplerState, TokenShards, WindowSampler, read_meta
from trainer.model import PhiModel
from trainer.presets import ModelConfig
from trainer.recipes import PROBE_SHAPES, Recipe, get_recipe

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by CUDA device-name substring; used when peak_flops is not set.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


@dataclass
class TrainConfig:
    preset: str = "tiny"
    recipe: str = "phi-1"
    max_tokens: int = 1_000_000          # token budget: compare dataset versions at the same budget
    seed: int = 0
    seq_len: int = 0                     # 0: the preset's probe default (trainer/recipes.py PROBE_SHAPES)
    batch_size: int = 0                  # sequences per optimizer step (effective); 0: preset default
    micro_batch_size: int = 0            # sequences per forward/backward (per GPU); 0: preset default
    lr: Optional[float] = None           # overrides of the recipe
    warmup_steps: Optional[int] = None
    dropout: Optional[float] = None
    weight_decay: Optional[float] = None
    ckpt_every: int = 0                  # optimizer steps between checkpoints; 0: only at the end
    log_every: int = 10                  # steps between printed lines (every step goes to metrics.jsonl)
    device: str = "auto"                 # auto | cpu | cuda
    dtype: str = "auto"                  # auto (fp32 on CPU, bf16 on CUDA) | float32 | bfloat16 | float16
    engine: str = "torch"                # torch | deepspeed (ZeRO-2; trainer/engine.py)
    attention: str = "sdpa"              # sdpa (PyTorch picks) | flash (flash-attn package) | sdpa-flash |
                                         # sdpa-cudnn | sdpa-efficient (force one SDPA backend; CUDA only)
    peak_flops: Optional[float] = None   # FLOP/s for MFU; None: known GPU table, unknown on CPU
    compile: bool = False                # torch.compile the model
    stop_after_steps: Optional[int] = None  # stop early (the schedule still assumes the full budget)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"n_layer": 4}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[dict[str, Any]] = None) -> "TrainConfig":
        import yaml

        d = yaml.safe_load(Path(path).read_text()) or {}
        d = d.get("train", d)
        d.update(overrides or {})
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- derived -------------------------------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """Fill 0 / None / auto fields from the preset's defaults and the machine."""
        shape = PROBE_SHAPES.get(self.preset, PROBE_SHAPES["tiny"])
        c = TrainConfig(**self.to_dict())
        c.seq_len = c.seq_len or shape.seq_len
        c.batch_size = c.batch_size or shape.batch_size
        c.micro_batch_size = min(c.micro_batch_size or shape.micro_batch_size, c.batch_size)
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        if c.dtype == "auto":
            c.dtype = "bfloat16" if c.device.startswith("cuda") else "float32"
        return c

    def recipe_obj(self) -> Recipe:
        r = get_recipe(self.recipe)
        over = {k: v for k, v in (("lr", self.lr), ("warmup_steps", self.warmup_steps),
                                   ("dropout", self.dropout), ("weight_decay", self.weight_decay))
                if v is not None}
        from dataclasses import replace
        return replace(r, **over)


def peak_flops_for(cfg: TrainConfig) -> Optional[float]:
    if cfg.peak_flops:
        return cfg.peak_flops
    if cfg.device.startswith("cuda") and cfg.dtype in ("bfloat16", "float16"):
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak
    return None  # CPU: unknown


# ---- RNG state ----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    s = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- plain PyTorch runner -----------------------------------------------------------------------------
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (matmul weights, embedding); not biases or LayerNorm gains (decaying them only hurts)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TorchRunner:
    world_size, rank = 1, 0

    def __init__(self, model: PhiModel, recipe: Recipe, total_steps: int, warmup: int, cfg: TrainConfig):
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
        self.fwd_model = torch.compile(self.model) if cfg.compile else self.model
        self.recipe = recipe
        fused = self.device.type == "cuda"
        self.opt = torch.optim.AdamW(param_groups(self.model, recipe.weight_decay), lr=recipe.lr,
                                     betas=recipe.betas, eps=recipe.eps, fused=fused)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: recipe.lr_multiplier(s, total_steps, warmup))
        self.amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, accum: int) -> float:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            _, loss = self.fwd_model(x, y)
        scaled = loss / accum
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach()

    def step(self) -> float:
        lr = self.opt.param_groups[0]["lr"]
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return lr

    def save(self, ckpt_dir: Path, client_state: dict[str, Any]) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "client": client_state}
        if self.scaler:
            state["scaler"] = self.scaler.state_dict()
        torch.save(state, ckpt_dir / "state.pt")

    def load(self, ckpt_dir: Path) -> dict[str, Any]:
        state = torch.load(ckpt_dir / "state.pt", map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.scaler and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        return state["client"]

    def barrier(self) -> None:
        pass

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}


# ---- checkpoint directory swap ------------------------------------------------------------------------
def _commit_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def _latest_checkpoint(out: Path) -> Optional[Path]:
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a kill between the two renames
        p = out / name
        if (p / "client.json").exists():
            return p
    return None


def _truncate_metrics(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    path.write_text("".join(ln + "\n" for ln in keep))


def build_model_config(cfg: TrainConfig, meta: dict[str, Any], recipe: Recipe) -> ModelConfig:
    over = {"vocab_size": meta["vocab_size"], "dropout": recipe.dropout, "attn_dropout": recipe.dropout,
            "max_seq_len": max(cfg.seq_len, 1)}
    over.update(cfg.model_overrides)
    return ModelConfig.from_name(cfg.preset, **over)


def train_probe(token_dir: str | Path, out_dir: str | Path, train_cfg: TrainConfig,
                verbose: bool = True) -> dict[str, Any]:
    """Train (or resume) a probe on `token_dir`'s train split; writes under `out_dir`:
    checkpoint/ (resumable), model.pt (final weights + model config), metrics.jsonl, train_summary.json.
    Returns the summary dict."""
    cfg = train_cfg.resolved()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_meta(token_dir)
    recipe = cfg.recipe_obj()
    if cfg.batch_size % cfg.micro_batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} not a multiple of micro_batch_size {cfg.micro_batch_size}")

    seed_everything(cfg.seed)
    mcfg = build_model_config(cfg, meta, recipe)
    model = PhiModel(mcfg)
    if cfg.attention != "sdpa" or cfg.engine == "deepspeed":
        from trainer import engine  # lazy: CPU needs neither deepspeed nor flash-attn
        fn = engine.attention_fn_for(cfg.attention)
        if fn is not None:
            model.set_attention_fn(fn)

    tokens_per_step = cfg.batch_size * cfg.seq_len
    total_steps = max(1, cfg.max_tokens // tokens_per_step)
    warmup = recipe.warmup_for(total_steps) if cfg.warmup_steps is None else cfg.warmup_steps

    if cfg.engine == "deepspeed":
        runner = engine.DeepSpeedRunner(model, recipe, total_steps, warmup, cfg)
    elif cfg.engine == "torch":
        runner = TorchRunner(model, recipe, total_steps, warmup, cfg)
    else:
        raise ValueError(f"unknown engine {cfg.engine!r}")
    world, rank = runner.world_size, runner.rank
    per_rank = cfg.micro_batch_size
    accum = cfg.batch_size // (per_rank * world)
    if accum < 1 or cfg.batch_size % (per_rank * world):
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size x world {per_rank * world}")

    shards = TokenShards(token_dir, "train", cfg.seq_len)
    sampler = WindowSampler(shards, seed=cfg.seed)
    step = 0
    metrics_path = out / "metrics.jsonl"
    ckpt = _latest_checkpoint(out)
    if ckpt is not None:
        client = runner.load(ckpt)
        step = client["step"]
        sampler.state = SamplerState(**client["sampler"])
        set_rng_state(torch.load(ckpt / f"rng_{rank}.pt", weights_only=False))
        if rank == 0:
            _truncate_metrics(metrics_path, step)
        if verbose and rank == 0:
            print(f"resumed from {ckpt} at step {step}")
        if step >= total_steps and (out / "train_summary.json").exists():
            return json.loads((out / "train_summary.json").read_text())  # already finished: nothing to do
    elif rank == 0 and metrics_path.exists():
        metrics_path.unlink()

    flops_tok = model.flops_per_token(cfg.seq_len)
    peak = peak_flops_for(cfg)
    n_params = model.num_params()
    if verbose and rank == 0:
        print(f"probe {cfg.preset}: {n_params / 1e6:.2f}M non-embedding params, {total_steps} steps x "
              f"{tokens_per_step} tokens (accum {accum}, world {world}), recipe {recipe.name}, "
              f"warmup {warmup}, device {cfg.device} {cfg.dtype}, engine {cfg.engine}, attention {cfg.attention}")

    def save_checkpoint() -> None:
        client = {"step": step, "sampler": asdict(sampler.state), "config": cfg.to_dict()}
        tmp = out / "checkpoint.tmp"
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        runner.barrier()
        runner.save(tmp, client)
        torch.save(rng_state(), tmp / f"rng_{rank}.pt")  # each rank's own dropout / sampling streams
        runner.barrier()
        if rank == 0:
            (tmp / "client.json").write_text(json.dumps(client))  # written last: marks the dir complete
            _commit_dir(tmp, out / "checkpoint")
        runner.barrier()

    stop_at = total_steps if cfg.stop_after_steps is None else min(total_steps, cfg.stop_after_steps)
    dev = torch.device(cfg.device)
    t_train, tokens_here, last_loss = 0.0, 0, float("nan")
    mf = open(metrics_path, "a") if rank == 0 else None
    while step < stop_at:
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        for _ in range(accum):
            idx = sampler.next_indices(per_rank * world)[rank * per_rank:(rank + 1) * per_rank]
            x, y = shards.batch(idx)
            x = torch.from_numpy(x).to(dev, non_blocking=True)
            y = torch.from_numpy(y).to(dev, non_blocking=True)
            loss_sum += runner.forward_backward(x, y, accum)
        lr = runner.step()
        loss = float(loss_sum) / accum  # .item() syncs the GPU once per step, not per micro batch
        if world > 1:
            loss = runner.mean_across_ranks(loss)
        dt = time.perf_counter() - t0
        step += 1
        t_train += dt
        tokens_here += tokens_per_step
        last_loss = loss
        tps = tokens_per_step / dt
        mfu = flops_tok * tps / peak if peak else None
        if mf is not None:
            mf.write(json.dumps({"step": step, "loss": loss, "lr": lr, "tokens": step * tokens_per_step,
                                 "tokens_per_s": tps, "mfu": mfu, "dt": dt}) + "\n")
            mf.flush()
        if verbose and rank == 0 and (step % cfg.log_every == 0 or step == stop_at):
            m = f" mfu {mfu:.1%}" if mfu is not None else ""
            print(f"step {step}/{total_steps} loss {loss:.4f} lr {lr:.2e} {tps:,.0f} tok/s{m}", flush=True)
        if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < stop_at:
            save_checkpoint()
    if mf is not None:
        mf.close()
    save_checkpoint()

    tps_avg = tokens_here / t_train if t_train > 0 else None
    summary = {
        "steps": step, "total_steps": total_steps, "tokens": step * tokens_per_step,
        "final_train_loss": _final_loss(metrics_path, last_loss),
        "tokens_per_s": tps_avg, "mfu": (flops_tok * tps_avg / peak) if (peak and tps_avg) else None,
        "peak_flops": peak, "flops_per_token": flops_tok, "non_embedding_params": n_params,
        "params": model.num_params(exclude_embedding=False), "warmup_steps": warmup,
        "config": cfg.to_dict(), "recipe": recipe.to_dict(), "model_config": mcfg.to_dict(),
        "token_dir": str(token_dir), "tokenizer": meta["tokenizer"], "eos_id": meta["eos_id"],
    }
    if rank == 0:
        torch.save({"model_config": mcfg.to_dict(), "state_dict": runner.model_state_dict(),
                    "tokenizer": meta["tokenizer"], "tokenizer_path": meta.get("tokenizer_path"),
                    "eos_id": meta["eos_id"]}, out / "model.pt")
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _final_loss(metrics_path: Path, fallback: float, window: int = 10) -> float:
    """Mean of the last `window` step losses (one step's loss is noisy); from metrics.jsonl so a resumed
    run reports the same number as an uninterrupted one."""
    if metrics_path.exists():
        losses = [json.loads(ln)["loss"] for ln in metrics_path.read_text().splitlines() if ln.strip()]
        if losses:
            return float(np.mean(losses[-window:]))
    return fallback


def load_probe(path: str | Path, device: str = "cpu") -> tuple[PhiModel, dict[str, Any]]:
    """Load `out_dir/model.pt` (or the file itself) -> (model in eval mode, the saved dict minus weights)."""
    p = Path(path)
    p = p / "model.pt" if p.is_dir() else p
    blob = torch.load(p, map_location=device, weights_only=False)
    model = PhiModel(ModelConfig.from_dict(blob["model_config"]))
    model.load_state_dict(blob.pop("state_dict"))
    return model.to(device).eval(), blob


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set lr=3e-4`` -> {"lr": 3e-4}: the same KEY=VALUE reading (value as YAML) as the factory CLI."""
    from factory.config import parse_override

    return {".".join(parts): value for parts, value in map(parse_override, items)}


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("token_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--config", help="YAML with TrainConfig fields (optionally under a `train:` key)")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value")
    a = ap.parse_args(argv)
    over = _parse_set(a.set)
    cfg = TrainConfig.from_yaml(a.config, over) if a.config else TrainConfig.from_dict(over)
    summary = train_probe(a.token_dir, a.out_dir, cfg)
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "final_train_loss", "tokens_per_s", "mfu")}))


if __name__ == "__main__":
    main()
