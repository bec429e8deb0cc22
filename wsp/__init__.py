"""wsp: weakly supervised pretraining of vision models on WordNet-canonicalised hashtags."""

__version__ = "0.1.0"
