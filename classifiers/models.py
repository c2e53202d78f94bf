"""Quality models: a random forest on embeddings (phi-1) or fastText on raw text (DCLM).

:class:`QualityModel` wraps either behind one interface.  ``quality_score`` is the positive-class probability
(classify) or the regressed LLM score (regress).  A saved model is a directory::

    model.json      what it is: model kind, objective, featurizer id and token cap, label threshold, lineage
    model.joblib    the scikit-learn estimator      (random_forest)
    model.bin       the fastText model              (fasttext)

and :meth:`QualityModel.load` on that directory predicts exactly what the trained object predicted.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from classifiers.featurizers import CHARS_PER_TOKEN_BOUND, CachedFeaturizer, get_featurizer

FORMAT_VERSION = 1
FT_POS, FT_NEG = "__label__hq", "__label__lq"

# fastText splits on whitespace only.  Code punctuation glued to identifiers ("foo(self):") would make every
# token unique, so ASCII punctuation becomes a space, except two code-quality marks kept as their own
# tokens: docstring quotes and comment hashes.  bytes.translate runs at memory speed, which is what keeps
# preprocessing well below fastText's own predict cost.
_PUNCT = set(string.punctuation) | set("\n\r\t\x0b\x0c")
_FT_TABLE = bytes(32 if chr(c) in _PUNCT else c for c in range(256))


def fasttext_line(text: str | None, max_chars: int) -> str:
    head = (text or "")[:max_chars]
    head = head.replace('"""', " QQQ ").replace("'''", " QQQ ").replace("#", " HASH ")
    return head.encode("utf-8", "replace").translate(_FT_TABLE).decode("utf-8", "replace")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("scikit-learn", "fasttext-numpy2", "numpy", "sentence-transformers", "llama-cpp-python", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


class QualityModel:
    def __init__(self, info: dict[str, Any], estimator: Any):
        self.info = info
        self.estimator = estimator

    # what it is -------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.info["model"]

    @property
    def objective(self) -> str:
        return self.info["objective"]

    @property
    def featurizer_name(self) -> str:
        return self.info["featurizer"]["name"]

    @property
    def max_tokens(self) -> int:
        return int(self.info["featurizer"]["max_tokens"])

    def make_featurizer(self, cache_dir: str | Path | None = None, threads: int | None = None) -> CachedFeaturizer | None:
        """The featurizer this model was trained on (None for fastText), checked against the recorded id."""
        if self.kind == "fasttext":
            return None
        f = get_featurizer(self.featurizer_name, max_tokens=self.max_tokens, threads=threads, cache_dir=cache_dir)
        want = self.info["featurizer"]["id"]
        if f.id != want:
            raise RuntimeError(
                f"this model was trained on featurizer {want!r} but this install provides {f.id!r}; "
                "retrain the classifier or install the package versions it was trained with"
            )
        return f

    # predicting -------------------------------------------------------------------------------
    def predict_features(self, X: np.ndarray) -> np.ndarray:
        if self.kind != "random_forest":
            raise TypeError("predict_features is for random_forest models; fastText reads text (predict_texts)")
        X = np.asarray(X, np.float32)
        if self.objective == "regress":
            return np.asarray(self.estimator.predict(X), np.float64)
        pos = list(self.estimator.classes_).index(1)
        return np.asarray(self.estimator.predict_proba(X)[:, pos], np.float64)

    def predict_texts(self, texts: Sequence[str], featurizer: CachedFeaturizer | None = None) -> np.ndarray:
        if self.kind == "fasttext":
            return self.predict_lines([fasttext_line(t, self.info["featurizer"]["max_chars"]) for t in texts])
        if featurizer is None:
            raise ValueError("a random_forest model needs its featurizer (QualityModel.make_featurizer())")
        return self.predict_features(featurizer.embed(list(texts)))

    def predict_lines(self, lines: Sequence[str]) -> np.ndarray:
        """fastText on already prepared lines (see :func:`fasttext_line`)."""
        if not len(lines):
            return np.zeros(0, np.float64)
        labels, probs = self.estimator.predict(list(lines), k=2)
        out = np.empty(len(lines), np.float64)
        for i, (lab, pr) in enumerate(zip(labels, probs)):
            d = dict(zip(lab, pr))
            out[i] = float(d.get(FT_POS, 1.0 - d.get(FT_NEG, 1.0)))
        return np.clip(out, 0.0, 1.0)

    # persistence ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.kind == "random_forest":
            import joblib

            joblib.dump(self.estimator, d / "model.joblib", compress=3)
            self.info["files"] = {"model": "model.joblib"}
        else:
            self.estimator.save_model(str(d / "model.bin"))
            self.info["files"] = {"model": "model.bin"}
        (d / "model.json").write_text(json.dumps(self.info, indent=2, sort_keys=True, default=str))
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "QualityModel":
        d = Path(directory)
        mj = d / "model.json"
        if not mj.exists():
            raise FileNotFoundError(f"no model.json in {d}: not a saved quality model (a classifier version's artifacts dir)")
        info = json.loads(mj.read_text())
        if info.get("format") != FORMAT_VERSION:
            raise RuntimeError(f"{mj}: model format {info.get('format')} is not {FORMAT_VERSION}; retrain")
        path = d / info["files"]["model"]
        if info["model"] == "random_forest":
            import joblib

            est = joblib.load(path)
            est.n_jobs = 1  # the threaded reduction over trees sums in arbitrary order: keep predictions bit-stable
        else:
            import fasttext

            est = fasttext.load_model(str(path))
        return cls(info, est)


# --------------------------------------------------------------------------------------------- fitting
def fit_forest(X: np.ndarray, labels: np.ndarray, scores: np.ndarray, objective: str, n_estimators: int, seed: int, n_jobs: int = 1):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    X = np.asarray(X, np.float32)
    if objective == "regress":
        est = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, min_samples_leaf=2)
        est.fit(X, scores)
    else:
        est = RandomForestClassifier(
            n_estimators=n_estimators, random_state=seed, n_jobs=n_jobs, class_weight="balanced", min_samples_leaf=1
        )
        est.fit(X, labels)
    est.n_jobs = 1
    return est


FASTTEXT_PARAMS = dict(dim=32, epoch=25, lr=0.2, wordNgrams=2, bucket=1 << 16, minCount=1, loss="softmax")

# fasttext-numpy2 keeps state between trainings in one process: the same data, seed and parameters can hit
# "Encountered NaN" after an earlier training of another shape, and succeed in a fresh process every time.
# So each training runs in its own short-lived interpreter; the parent loads the saved model.
_FT_TRAIN = """
import json, sys
import fasttext
src, dst, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    m = fasttext.train_supervised(input=src, thread=1, verbose=0, **params)
except RuntimeError as e:
    if "NaN" in str(e):
        sys.exit(3)
    raise
m.save_model(dst)
"""


def fit_fasttext(texts: Sequence[str], labels: np.ndarray, seed: int, max_chars: int):
    """fastText supervised on raw text: one thread and a seed, in a fresh process, so the same data give the
    same model.  A diverging run (NaN loss) is retried with half the learning rate."""
    import json as _json
    import subprocess
    import sys

    import fasttext

    lines = [fasttext_line(t, max_chars) for t in texts]
    # fastText has no class weights: repeat minority rows so both classes carry about the same weight
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    rep_pos = max(1, round(n_neg / n_pos)) if n_pos and n_neg > n_pos else 1
    rep_neg = max(1, round(n_pos / n_neg)) if n_neg and n_pos > n_neg else 1
    with tempfile.TemporaryDirectory(prefix="ft-train-") as tmp:
        path = os.path.join(tmp, "train.txt")
        with open(path, "w", encoding="utf-8") as f:
            for line, y in zip(lines, labels):
                for _ in range(rep_pos if y else rep_neg):
                    f.write(f"{FT_POS if y else FT_NEG} {line}\n")
        params = {**FASTTEXT_PARAMS, "seed": int(seed)}
        out = os.path.join(tmp, "model.bin")
        for _attempt in range(4):
            proc = subprocess.run(
                [sys.executable, "-c", _FT_TRAIN, path, out, _json.dumps(params)], capture_output=True, text=True
            )
            if proc.returncode == 0:
                model = fasttext.load_model(out)
                model.train_params = params  # type: ignore[attr-defined]
                return model
            if proc.returncode != 3:
                raise RuntimeError(f"fastText training failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            params["lr"] = params["lr"] / 2
        raise RuntimeError(f"fastText training diverged (NaN loss) down to lr={params['lr'] * 2:g}")


def new_model_info(
    model: str, objective: str, featurizer: CachedFeaturizer | None, max_tokens: int, label_threshold: float
) -> dict[str, Any]:
    if model == "fasttext":
        feat = {
            "name": "fasttext-text",
            "id": f"fasttext-text:v1:chars{max_tokens * CHARS_PER_TOKEN_BOUND}",
            "max_tokens": max_tokens,
            "max_chars": max_tokens * CHARS_PER_TOKEN_BOUND,
            "params": FASTTEXT_PARAMS,
        }
    else:
        assert featurizer is not None
        feat = {"name": featurizer.name, "id": featurizer.id, "dim": featurizer.dim, "max_tokens": max_tokens}
    return {
        "format": FORMAT_VERSION,
        "model": model,
        "objective": objective if model == "random_forest" else "classify",
        "featurizer": feat,
        "label_threshold": label_threshold,
        "libraries": library_versions(),
    }
