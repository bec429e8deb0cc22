"""task=corpus: posts tables -> canonical labels -> WebDataset shards (conf/corpus/)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require, require_positive


def run(cfg: DictConfig) -> dict:
    from wsp.corpus.build import BuildOptions, build, expand_inputs
    from wsp.corpus.posts import Columns
    from wsp.hashtags.vocab import build_vocabulary

    c = cfg.corpus
    require(cfg, "corpus.input")
    require(cfg, "corpus.output")
    require_positive(cfg, "corpus.shard_size", "corpus.min_count")
    if not 0 <= c.val_fraction < 1:
        raise ConfigError(f"corpus.val_fraction={c.val_fraction}: must be in [0, 1)")
    try:
        inputs = expand_inputs(OmegaConf.to_container(c.input) if OmegaConf.is_list(c.input) else c.input)
        vocabulary = build_vocabulary(c.vocabulary, c.wnids, c.ambiguous)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    options = BuildOptions(shard_size=c.shard_size, val_fraction=c.val_fraction, min_count=c.min_count)
    stats = build(inputs, Path(c.output), vocabulary, Columns(**c.columns), options)
    return {
        "posts_read": stats["posts_read"],
        "train_images": stats["written"]["train"],
        "val_images": stats["written"]["val"],
        "labels": stats["labels"]["kept"],
        "dropped": sum(stats["dropped"].values()),
    }
