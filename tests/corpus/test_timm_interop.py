"""A wsp corpus is a timm WebDataset: timm's own reader opens its train and val splits from _info.json."""

import json
import shutil

import pytest


@pytest.mark.parametrize("split", ["train", "val"])
def test_timm_reads_every_sample_of_a_copied_corpus(corpus_dir, tmp_path, split):
    from timm.data import create_dataset

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)  # timm finds shards by the names in _info.json, relative to the root
    info = json.loads((copy / "_info.json").read_text())
    sizes = json.loads((copy / "sizes.json").read_text())
    expected = sum(n for name, n in sizes.items() if name.startswith(f"{split}-"))
    assert info["splits"][split]["num_samples"] == expected > 0
    dataset = create_dataset("wds/wsp", root=str(copy), split=split, target_key="labels")
    samples = list(dataset)
    assert len(samples) == expected
    image, labels = samples[0]
    assert image.size[0] > 0 and labels and all(0 <= label < info["num_classes"] for label in labels)
