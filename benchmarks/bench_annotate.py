"""Annotation throughput and parse rate of the embedded engine (llama.cpp, SmolLM2-135M GGUF) on this machine.

For each output mode (choice: grammar-constrained score token; json: the template's JSON schema; free: plain
text through the robust parser) it annotates the same seeded, source-stratified sample of the demo corpus
and prints annotations/minute, prompt and completion tokens/s, and the fraction of replies that parse.
No response cache: every request is a model call.

    python benchmarks/bench_annotate.py [--n 16] [--template annotate/phi1_code] [--max-doc-chars 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from factory.config import AnnotateConfig, EngineConfig, IngestConfig  # noqa: E402
from factory.engines.base import make_engine  # noqa: E402
from factory.prompts import load_template  # noqa: E402
from factory.stages.annotate import Annotator, sample_positions  # noqa: E402
from factory.stages.ingest import demo_inputs  # noqa: E402


def corpus(max_files: int) -> list[dict]:
    docs = []
    for label, files in demo_inputs(IngestConfig(demo_max_files=max_files)):
        for f in files:
            docs.append({"id": f, "text": Path(f).read_text(errors="replace"), "source": label, "meta": "{}"})
    return docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--template", default="annotate/phi1_code")
    ap.add_argument("--max-doc-chars", type=int, default=1000)
    ap.add_argument("--modes", default="choice,json,free")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    docs = corpus(400)
    pos = sample_positions([d["id"] for d in docs], [d["source"] for d in docs], args.n, args.seed)
    sample = [docs[i] for i in pos]
    template = load_template(args.template)
    ecfg = EngineConfig(kind="local", n_ctx=2048, n_threads=args.threads)
    t0 = time.time()
    engine = make_engine(ecfg)
    load_s = time.time() - t0
    ident = engine.identity()
    print(f"# bench_annotate: {len(sample)} docs, template {template.id} ({template.hash[:10]}), "
          f"model {ident['file']}, n_threads={engine.n_threads}, cpus={os.cpu_count()}, load {load_s:.2f}s")
    head = f"{'mode':<7} {'docs':>5} {'wall_s':>7} {'annot/min':>9} {'prompt_tok/s':>12} {'compl_tok/s':>11} {'parsed':>7} {'mean_score':>10} {'mean_expected':>13}"
    print(head)
    print("-" * len(head))
    for mode in args.modes.split(","):
        max_tokens = {"choice": 4, "json": 24, "free": 48}[mode]
        annot = Annotator(AnnotateConfig(output=mode, max_tokens=max_tokens, max_doc_chars=args.max_doc_chars, seed=args.seed), template, ident)
        reqs = [annot.request(d) for d in sample]
        t0 = time.time()
        resps = engine.generate(reqs)
        wall = time.time() - t0
        parsed = [template.parse(r.text) for r in resps]
        ok = [p for p in parsed if p.status == "ok"]
        exp = [r.expected for r in resps if r.expected is not None]
        pt = sum(r.prompt_tokens for r in resps)
        ct = sum(r.completion_tokens for r in resps)
        mean = sum(p.score for p in ok) / len(ok) if ok else float("nan")
        mexp = sum(exp) / len(exp) if exp else float("nan")
        print(f"{mode:<7} {len(resps):>5} {wall:>7.1f} {60 * len(resps) / wall:>9.1f} {pt / wall:>12.1f} {ct / wall:>11.1f} "
              f"{len(ok) / len(resps):>7.0%} {mean:>10.2f} {mexp:>13.2f}")
        if mode == "free":
            bad = [r.text for r, p in zip(resps, parsed) if p.status != "ok"][:3]
            for b in bad:
                print(f"    unparsed free reply: {b[:90]!r}")
    engine.close()


if __name__ == "__main__":
    main()
