"""textbook-factory: textbook-quality training data from raw corpora, ranked by probe models."""

__version__ = "0.1.0"
