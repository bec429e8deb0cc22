"""The notebooks' shared helpers on hand-made sweep tables."""

import pandas as pd

from wsp.analysis import curve_labels


def test_curves_split_by_vocabulary_only_when_a_sweep_has_several():
    table = pd.DataFrame({
        "config.model.name": ["resnext101_32x8d", "resnext101_32x8d", "wsp_resnext_tiny"],
        "config.corpus.vocabulary": ["wordnet", "in1k", "in1k"],
    })  # fmt: skip
    assert curve_labels(table).tolist() == [
        "resnext101_32x8d, wordnet vocabulary", "resnext101_32x8d, in1k vocabulary", "resnext_tiny, in1k vocabulary",
    ]  # fmt: skip
    assert curve_labels(table[table["config.corpus.vocabulary"] == "in1k"]).tolist() == [
        "resnext101_32x8d",
        "resnext_tiny",
    ]
