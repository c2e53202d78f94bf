"""Quality-classifier benchmark: throughput per core, and held-out agreement with the labels.

Two tables:

1. docs/s per core (one thread) for each featurizer, random-forest predict (on embeddings) and fastText
   predict (with and without its text preparation).  Target: fastText >= 20,000 docs/s per core.
2. Held-out agreement with the annotation labels for every (featurizer x classifier) pair, all on the same
   seeded split of the same annotated sample.

Labels: an annotations version from a store (``--store DIR --annotations VERSION``, e.g. real LLM labels from the
annotate stage), or by default the heuristic STAND-IN labeller (``classifiers.standin``) over real demo-corpus
documents.  Embeddings are cached under ``--cache`` so a rerun only re-measures.

    python benchmarks/bench_classifiers.py --files 300 --max-tokens 256
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from classifiers.data import load_training_data, split  # noqa: E402
from classifiers.featurizers import make_featurizer  # noqa: E402
from classifiers.models import QualityModel, fasttext_line  # noqa: E402
from classifiers.standin import standin_annotations  # noqa: E402
from classifiers.train import train_quality_model  # noqa: E402
from factory.config import ClassifierConfig, build_config  # noqa: E402


def demo_sample(n_files: int) -> pa.Table:
    from factory.stages.ingest import Ingest, plan

    cfg = build_config({"ingest": {"demo_max_files": n_files, "rows_per_shard": 1000}}).ingest
    t = pa.concat_tables([Ingest(cfg).read_task(task).table for task in plan(cfg)]).sort_by("id")
    return standin_annotations(t)


def rate(fn, n: int, min_s: float = 1.0) -> float:
    """docs/s of fn() processing n docs, repeated until min_s has passed."""
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += n
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return done / dt


def table(rows: list[list[str]], head: list[str]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{x}}}" if i == 0 else f"{{:>{x}}}" for i, x in enumerate(w))
    return "\n".join([fmt.format(*head), fmt.format(*("-" * x for x in w)), *(fmt.format(*r) for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300, help="demo-corpus files to annotate with the stand-in")
    ap.add_argument("--store", help="a store holding a real annotations version")
    ap.add_argument("--annotations", help="the annotations version id (with --store)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--label-threshold", type=float, default=3.0)
    ap.add_argument("--featurizers", default="minilm,smollm")
    ap.add_argument("--speed-docs", type=int, default=48, help="documents per featurizer speed run")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "textbook-factory" / "bench-embeddings"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.store:
        from factory.store import Store

        ann = Store(args.store).get(args.annotations)
        data_table, label_source = ann.read(), f"annotations version {ann.id}"
    else:
        data_table, label_source = demo_sample(args.files), f"heuristic STAND-IN labels on {args.files} demo-corpus files"
    feats = [f for f in args.featurizers.split(",") if f]
    load = os.getloadavg()[0]
    print(f"# bench_classifiers  labels: {label_source}  max_tokens={args.max_tokens}  cpus={os.cpu_count()}  loadavg={load:.1f}")

    # ---------------------------------------------------------------------------- agreement (same split)
    data = load_training_data(data_table, args.label_threshold, 20)
    sp = split(data, 0.25, args.seed)
    val_ids = [data.ids[i] for i in sp.val]
    agree_rows, models = [], {}
    pairs = [(f, "random_forest", "classify") for f in feats] + [(f, "random_forest", "regress") for f in feats[:1]]
    pairs.append(("none", "fasttext", "classify"))
    for feat, model, objective in pairs:
        cfg = ClassifierConfig(
            featurizer=feat, model=model, objective=objective, max_tokens=args.max_tokens, seed=args.seed,
            label_threshold=args.label_threshold, val_fraction=0.25,
        )
        t0 = time.time()
        # llama.cpp's OpenMP threads spin-wait: on a shared machine more threads than free cores is far slower
        threads = 1 if feat == "smollm" else os.cpu_count()
        r = train_quality_model(data_table, cfg, cache_dir=args.cache, threads=threads)
        assert [r.data.ids[i] for i in r.split.val] == val_ids  # the very same held-out rows
        models[(feat, model, objective)] = r
        v = r.metrics["validation"]
        name = "fastText (raw text)" if model == "fasttext" else f"{feat} x RF-{objective}"
        agree_rows.append(
            [
                name,
                str(r.metrics["training_size"]),
                str(v["n"]),
                f"{v['f1']:.3f}",
                f"{v['precision']:.3f}",
                f"{v['recall']:.3f}",
                f"{v['roc_auc']:.3f}" if v["roc_auc"] is not None else "-",
                f"{v['spearman_vs_llm_score']:.3f}" if v["spearman_vs_llm_score"] is not None else "-",
                f"{v['decision_threshold']:g}",
                f"{time.time() - t0:.1f}s",
            ]
        )
    pos = float(data.labels[sp.val].mean())
    print(f"\n## held-out agreement with the labels (same split: {len(val_ids)} rows, {pos:.0%} positive at score >= {args.label_threshold:g})\n")
    print(table(agree_rows, ["pair", "train", "val", "F1", "precision", "recall", "ROC-AUC", "Spearman", "thr", "train time"]))

    # ---------------------------------------------------------------------------- throughput, one thread
    texts = data.texts
    speed_rows = []
    for feat in feats:
        f = make_featurizer(feat, max_tokens=args.max_tokens, threads=1)
        docs = texts[: args.speed_docs]
        r = rate(lambda: f.embed(docs), len(docs), min_s=3.0)
        speed_rows.append([f"featurize {feat} ({args.max_tokens} tok, no cache)", f"{r:,.1f}"])
        del f
    for feat in feats:
        m: QualityModel = models[(feat, "random_forest", "classify")].model
        X = np.random.default_rng(0).standard_normal((2000, m.info["featurizer"]["dim"])).astype(np.float32)
        r = rate(lambda: m.predict_features(X), len(X))
        speed_rows.append([f"random-forest predict ({feat} {m.info['featurizer']['dim']}-d, {m.estimator.n_estimators} trees)", f"{r:,.0f}"])
    ft: QualityModel = models[("none", "fasttext", "classify")].model
    many = (texts * (20_000 // max(1, len(texts)) + 1))[:20_000]
    max_chars = ft.info["featurizer"]["max_chars"]
    lines = [fasttext_line(t, max_chars) for t in many]
    speed_rows.append(["fastText predict (prepared lines)", f"{rate(lambda: ft.predict_lines(lines), len(lines)):,.0f}"])
    speed_rows.append([f"fastText predict (raw text, incl. prep of {max_chars} chars)", f"{rate(lambda: ft.predict_texts(many), len(many)):,.0f}"])
    speed_rows.append(["fastText text prep only", f"{rate(lambda: [fasttext_line(t, max_chars) for t in many], len(many)):,.0f}"])
    print(f"\n## throughput, one thread (docs/s per core; loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other work shares them)\n")
    print(table(speed_rows, ["step", "docs/s/core"]))


if __name__ == "__main__":
    main()
