"""Shared fixtures: the real WordNet vocabulary, a miniature synthetic corpus built by the real pipeline,
and configs composed from the real conf/ files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from wsp.config import CONF_DIR
from wsp.corpus.build import BuildOptions, build, expand_inputs
from wsp.corpus.posts import Columns
from wsp.corpus.synthetic import generate
from wsp.hashtags.vocab import build_vocabulary

MINI = dict(concepts=6, posts=240, image_size=48, zipf_exponent=1.0, multi_concept_rate=0.15, wrong_tag_rate=0.2,
            missing_tag_rate=0.1, target_train_per_class=4, target_val_per_class=3, posts_per_file=60, seed=0)  # fmt: skip


@pytest.fixture(scope="session")
def in1k():
    return build_vocabulary("in1k")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory, in1k) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, in1k, **MINI)
    return out


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, synthetic_dir, in1k) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build(expand_inputs(str(synthetic_dir / "posts" / "*.jsonl")), out, in1k, Columns(),
          BuildOptions(shard_size=40, val_fraction=0.1))  # fmt: skip
    return out


@pytest.fixture
def compose_config(tmp_path):
    """Compose conf/config.yaml with overrides, as `python run.py <overrides>` would."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[f"output_dir={tmp_path}", *overrides])

    return _compose
