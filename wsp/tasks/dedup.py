"""task=dedup: find near-duplicates of evaluation images in a corpus; write matches.csv and contact sheets."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig

from wsp.config import ConfigError, require, require_choice, require_positive

METHODS = ("exact", "phash", "embedding")
log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    import torch

    from wsp.corpus.dedup import (
        Embedder,
        contact_sheets,
        corpus_shards,
        eval_images,
        find_duplicates,
        write_matches,
    )
    from wsp.data.transforms import CentreCrop
    from wsp.models.backbones import create_backbone
    from wsp.tasks.common import eval_crop_pct, load_pretrained

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
    if not isinstance(t.num_workers, int) or t.num_workers < 0:
        raise ConfigError(f"task.num_workers={t.num_workers}: must be an integer >= 0")
    embedding = "embedding" in t.methods
    if embedding and not cfg.backbone.weights:
        raise ConfigError("backbone.weights is required for task.methods=[...,embedding]: a randomly initialised "
                          "network is no duplicate detector (or leave embedding out of task.methods)")  # fmt: skip
    try:
        paths = eval_images(list(t.eval))
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    embedder, device = None, torch.device("cpu")
    if embedding:
        try:
            backbone = create_backbone(cfg.model.name, **cfg.model.kwargs)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        load_pretrained(cfg, backbone)
        if cfg.trainer.accelerator == "gpu" and torch.cuda.is_available():
            device = torch.device("cuda")
        embedder = Embedder(backbone, CentreCrop(cfg.model.image_size, eval_crop_pct(cfg.model.name)), device)
    shards, listed = corpus_shards(corpus)
    found = find_duplicates(paths, shards, list(t.methods), phash_max_distance=t.phash_max_distance,
                            embedder=embedder, threshold=t.threshold, k=t.k, batch_size=t.batch_size,
                            num_workers=t.num_workers)  # fmt: skip
    if found.corpus_images < listed:  # webdataset warned about each unreadable tar
        log.warning(f"dedup: read {found.corpus_images} of the {listed} corpus samples sizes.json lists")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_matches(found.matches, out / "matches.csv")
    matched = {m.eval_image for m in found.matches}
    sheets = 0
    if found.neighbours is not None and t.sheets != "none":
        selected = {i for i, p in enumerate(paths)
                    if found.eval_decoded[i] and (t.sheets == "all" or str(p) in matched)}  # fmt: skip
        sheets = contact_sheets(paths, found.neighbours, shards, selected, out / "sheets")
    return {
        "eval_images": len(paths),
        "eval_images_undecodable": found.eval_images_undecodable,
        "corpus_images": found.corpus_images,
        "corpus_images_undecodable": found.corpus_images_undecodable,
        "corpus_images_unread": listed - found.corpus_images,
        "eval_images_matched": len(matched),
        "corpus_keys_matched": len({m.corpus_key for m in found.matches}),
        "matches_by_method": dict(Counter(m.method for m in found.matches)),
        "contact_sheets": sheets,
        "embedding_device": str(device) if embedding else None,
        "matches": str(out / "matches.csv"),
    }
