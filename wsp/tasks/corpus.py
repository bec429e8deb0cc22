"""task=corpus: posts tables or img2dataset shards -> canonical labels -> WebDataset shards."""

from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require, require_choice, require_positive


def run(cfg: DictConfig) -> dict:
    from wsp.corpus.build import STAGES, BuildOptions, CorpusBuilder, CorpusError, expand_inputs
    from wsp.corpus.posts import Columns

    c = cfg.corpus
    require(cfg, "corpus.input")
    require(cfg, "corpus.output")
    require_positive(cfg, "corpus.shard_size", "corpus.min_count", "corpus.workers", "corpus.num_parts")
    require_choice(cfg, "corpus.stage", STAGES)
    require_choice(cfg, "corpus.verify_images", ("header", "decode"))
    require_choice(cfg, "corpus.train_images", ("copy", "reference"))
    if c.max_labels is not None and (not isinstance(c.max_labels, int) or c.max_labels < 1):
        raise ConfigError(f"corpus.max_labels={c.max_labels}: must be null or an integer >= 1")
    for key in ("val_fraction", "label_noise", "max_error_rate"):
        if not isinstance(c[key], int | float) or not 0 <= c[key] <= 1:
            raise ConfigError(f"corpus.{key}={c[key]}: must be in [0, 1]")
    if not isinstance(c.subset, int | float) or not 0 < c.subset <= 1:
        raise ConfigError(f"corpus.subset={c.subset}: must be in (0, 1]")
    if not 0 <= c.part < c.num_parts:
        raise ConfigError(f"corpus.part={c.part}: must be in [0, corpus.num_parts={c.num_parts})")
    try:
        inputs = expand_inputs(OmegaConf.to_container(c.input) if OmegaConf.is_list(c.input) else c.input)
        vocabulary = corpus_vocabulary(c)
        exclude = read_exclude(c.exclude) if c.exclude else ()
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    options = BuildOptions(
        shard_size=c.shard_size, val_fraction=c.val_fraction, min_count=c.min_count, max_labels=c.max_labels,
        label_noise=c.label_noise, seed=c.seed, max_error_rate=c.max_error_rate, verify_images=c.verify_images,
        exclude=exclude, train_images=c.train_images, subset=c.subset,
    )  # fmt: skip
    builder = CorpusBuilder(inputs, Path(c.output), vocabulary, Columns(**c.columns), options, c.workers)
    try:
        stats = builder.run(c.stage, c.part, c.num_parts)
    except CorpusError as err:
        raise ConfigError(str(err)) from None
    if stats is None:  # one stage of a multi-job build
        return {"stage": c.stage, "part": c.part, "num_parts": c.num_parts, "units": len(inputs)}
    return {
        "posts_read": stats["posts_read"],
        "train_images": stats["written"]["train"],
        "val_images": stats["written"]["val"],
        "labels": stats["labels"]["kept"],
        "dropped": sum(stats["dropped"].values()),
        "errors": stats["errors"],
    }


def corpus_vocabulary(c: DictConfig):
    """The vocabulary `corpus.*` names (wsp.hashtags.vocab.build_vocabulary)."""
    from wsp.hashtags.vocab import build_vocabulary

    return build_vocabulary(c.vocabulary, c.wnids, c.ambiguous, c.list_file, c.get("imagenet22k_root"),
                            c.get("classes"), c.get("index_cache"))  # fmt: skip


def read_exclude(path: str) -> tuple[str, ...]:
    """Post keys to drop: a text file (one per line) or a CSV with a `corpus_key` column (task=dedup's)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"corpus.exclude={path}: no such file")
    if file.suffix == ".csv":
        with file.open(newline="") as table:
            return tuple(sorted({row["corpus_key"] for row in csv.DictReader(table)}))
    return tuple(sorted({line.strip() for line in file.read_text().splitlines() if line.strip()}))
