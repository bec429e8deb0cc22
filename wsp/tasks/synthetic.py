"""task=synthetic: write the synthetic posts and labelled target task (conf/synthetic/)."""

from __future__ import annotations

from omegaconf import DictConfig

from wsp.config import ConfigError, require_positive


def run(cfg: DictConfig) -> dict:
    from wsp.corpus.synthetic import generate
    from wsp.hashtags.vocab import build_vocabulary

    s = cfg.synthetic
    require_positive(cfg, "synthetic.posts", "synthetic.image_size", "synthetic.target_train_per_class",
                     "synthetic.target_val_per_class", "synthetic.posts_per_file")  # fmt: skip
    try:
        summary = generate(
            s.output, build_vocabulary("in1k"), concepts=s.concepts, posts=s.posts, image_size=s.image_size,
            zipf_exponent=s.zipf_exponent, multi_concept_rate=s.multi_concept_rate, wrong_tag_rate=s.wrong_tag_rate,
            missing_tag_rate=s.missing_tag_rate, target_train_per_class=s.target_train_per_class,
            target_val_per_class=s.target_val_per_class, posts_per_file=s.posts_per_file, seed=s.seed,
            outside_in1k=s.outside_in1k,
        )  # fmt: skip
    except ValueError as err:  # a concept count the glyphs or synsets cannot meet
        raise ConfigError(str(err)) from None
    return {"posts": summary["posts"], "concepts": len(summary["concepts"])}
