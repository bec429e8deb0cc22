"""task=dedup: find near-duplicates of evaluation images in a corpus; write matches.csv and contact sheets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from wsp.config import ConfigError, require, require_choice, require_positive

METHODS = ("exact", "phash", "embedding")


def run(cfg: DictConfig) -> dict:
    from wsp.corpus.dedup import contact_sheets, eval_images, find_duplicates, write_matches
    from wsp.data.transforms import eval_transform
    from wsp.models.backbones import create_backbone
    from wsp.tasks.common import load_pretrained

    t = cfg.task
    corpus = Path(str(require(cfg, "task.corpus")))
    if not (corpus / "sizes.json").is_file():
        raise ConfigError(f"task.corpus={corpus}: no sizes.json; build the corpus first with task=corpus")
    if not t.eval:
        raise ConfigError("task.eval is required: a list of evaluation image folders")
    unknown = sorted(set(t.methods) - set(METHODS))
    if unknown or not t.methods:
        raise ConfigError(f"task.methods={list(t.methods)}: choose from {', '.join(METHODS)}")
    require_choice(cfg, "task.sheets", ("matched", "all", "none"))
    require_positive(cfg, "task.k", "task.batch_size")
    try:
        paths = eval_images(list(t.eval))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    backbone = None
    if "embedding" in t.methods:
        try:
            backbone = create_backbone(cfg.model.name, **cfg.model.kwargs)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        load_pretrained(cfg, backbone)
    matches, neighbours = find_duplicates(paths, corpus, list(t.methods), t.phash_max_distance, backbone,
                                          eval_transform(cfg.model.image_size), t.threshold, t.k, t.batch_size)  # fmt: skip
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_matches(matches, out / "matches.csv")
    matched = {str(p) for p in {m.eval_image for m in matches}}
    sheets = 0
    if neighbours is not None and t.sheets != "none":
        selected = {i for i, p in enumerate(paths) if t.sheets == "all" or str(p) in matched}
        sheets = contact_sheets(paths, neighbours, corpus, selected, out / "sheets")
    return {
        "eval_images": len(paths),
        "eval_images_matched": len(matched),
        "corpus_keys_matched": len({m.corpus_key for m in matches}),
        "matches_by_method": dict(Counter(m.method for m in matches)),
        "contact_sheets": sheets,
        "matches": str(out / "matches.csv"),
    }
