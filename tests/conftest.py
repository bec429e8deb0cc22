"""Shared fixtures: the real WordNet vocabulary, a miniature synthetic corpus built by the real pipeline,
and configs composed from the real conf/ files."""

from __future__ import annotations

import io
import os
from pathlib import Path

# One intra-op thread per process, in this one and every process a test starts (run.py, DDP ranks, their
# data workers), as torchrun does: the suite's runs are tiny, and on a 2-core machine a process's second
# thread only contends with its own workers and peers (a tiny-model pretraining ran 7x slower beside
# another job with two threads than with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from wsp.config import CONF_DIR
from wsp.corpus.build import BuildOptions, build, expand_inputs
from wsp.corpus.posts import Columns
from wsp.corpus.synthetic import generate
from wsp.hashtags.vocab import build_vocabulary
from wsp.hashtags.wordnet import imagenet1k_wnids

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


WNIDS = imagenet1k_wnids()


def tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(buffer, "JPEG")
    return buffer.getvalue()


def put(path: Path, source: Path | None = None) -> Path:
    """A tiny JPEG at `path` (a hard link to `source` when given: thousands of files cost nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is None:
        path.write_bytes(tiny_jpeg())
    else:
        os.link(source, path)
    return path


@pytest.fixture(scope="session")
def imagenet_root(tmp_path_factory) -> Path:
    """train/ and val/ as wnid folders, one image per class (all 1,000, as torchvision needs)."""
    root = tmp_path_factory.mktemp("imagenet")
    source = put(root / "source.jpg")
    for i, wnid in enumerate(WNIDS):
        put(root / "train" / wnid / f"{wnid}_{i}.JPEG", source)
        put(root / "val" / wnid / f"ILSVRC2012_val_{i + 1:08d}.JPEG", source)
    return root


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory, synthetic_dir) -> Path:
    """The synthetic target task in CUB-200-2011's layout: its classes as bird classes, its splits as
    train_test_split.txt, boxes around the whole image."""
    root = tmp_path_factory.mktemp("CUB_200_2011")
    classes = sorted(p.name for p in (synthetic_dir / "target" / "train").iterdir())
    rows = {name: [] for name in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    for split in ("train", "val"):
        for label, wnid in enumerate(classes):
            for image in sorted((synthetic_dir / "target" / split / wnid).iterdir()):
                i = len(rows["images"]) + 1
                relative = f"{label + 1:03d}.{wnid}/{split}_{image.name}"
                (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
                os.link(image, root / "images" / relative)
                width, height = Image.open(image).size
                rows["images"].append(f"{i} {relative}")
                rows["image_class_labels"].append(f"{i} {label + 1}")
                rows["train_test_split"].append(f"{i} {int(split == 'train')}")
                rows["bounding_boxes"].append(f"{i} 0.0 0.0 {width}.0 {height}.0")
    for name, lines in rows.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text(
        "".join(f"{i + 1} {i + 1:03d}.{wnid}\n" for i, wnid in enumerate(classes))
    )
    return root
