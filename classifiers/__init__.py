"""Quality classifiers: featurizers (LM / sentence embeddings), random forest and fastText models, metrics.

The pieces, in the order the pipeline uses them:

* ``featurizers``: text -> embedding matrix, offline only (weights shipped in site-packages), with an on-disk
  cache keyed by (featurizer id, text hash).
* ``data``: an annotations table -> usable training rows, labels and a seeded, stratified train/val split,
  with :class:`ClassifierDataError` for data a classifier cannot be trained on.
* ``models``: :class:`QualityModel` (random forest on embeddings, or fastText on raw text): train, predict,
  save, load.
* ``metrics``: held-out agreement with the LLM labels.
* ``train``: the whole recipe, called by the ``train_classifier`` runner and the benchmark.

Nothing here imports ray or the store; the runtime layer wires it to versions.
"""

from __future__ import annotations


class ClassifierDataError(ValueError):
    """The annotations cannot train a classifier (all parse failures, too few rows, a single class)."""


__all__ = ["ClassifierDataError"]
