"""Frozen-backbone features for linear evaluation, VISSL-style: the average-pooled output of chosen
ResNe(X)t stages (res2..res5; res5 is the backbone's usual pooled feature, 2048-d for ResNeXt-101),
extracted once in eval mode and cached on disk, so probes with any regulariser reuse them.

The cache is a folder per (weights, model, dataset, preprocessing, stages) holding safetensors shards of
`shard_size` samples: each stage's features, the labels, and the samples' indices in their split (an
unreadable image leaves a gap, not a shift). A split is complete when its `<split>.json` lists its shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsp.data.transforms import normalise

STAGES = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}

Features = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]  # per stage, labels, indices


@torch.no_grad()
def extract(backbone: torch.nn.Module, loader: DataLoader, stages: list[str], desc: str = "features"):
    """Yields (pooled features per stage, labels, indices) per batch, the backbone in eval mode."""
    backbone.eval()
    pooled: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(backbone, STAGES[stage]).register_forward_hook(
            lambda module, args, out, stage=stage: pooled.__setitem__(
                stage, F.adaptive_avg_pool2d(out, 1).flatten(1)
            )
        )
        for stage in stages
    ]
    try:
        for images, labels, _, indices in tqdm(loader, desc=desc, unit="batch"):
            backbone.forward_features(normalise(images))
            yield {stage: pooled[stage].float() for stage in stages}, labels, indices
    finally:
        for hook in hooks:
            hook.remove()


def cache_key(**identity) -> str:
    """What the features depend on; a weights file counts by path, size and modification time."""
    weights = identity.get("weights")
    if weights:
        stat = Path(weights).stat()
        identity["weights"] = [str(Path(weights).resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_features(folder: Path, split: str, batches, shard_size: int = 10_000) -> Features:
    """The split's features from `folder`, extracting them (from the `batches` iterator) if absent."""
    index_file = folder / f"{split}.json"
    if not index_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shards, pending = [], []

        def flush():
            if pending:
                name = f"{split}-{len(shards):05d}.safetensors"
                tensors = {f"stage.{k}": torch.cat([p[0][k] for p in pending]) for k in pending[0][0]}
                tensors["labels"] = torch.cat([p[1] for p in pending])
                tensors["indices"] = torch.cat([p[2] for p in pending])
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / name))
                shards.append(name)
                pending.clear()

        for batch in batches:
            pending.append(batch)
            if sum(len(p[1]) for p in pending) >= shard_size:
                flush()
        flush()
        partial = index_file.with_suffix(".tmp")
        partial.write_text(json.dumps({"shards": shards}))
        os.replace(partial, index_file)  # written last: a killed extraction is redone, never half-read
    parts = [load_file(folder / name) for name in json.loads(index_file.read_text())["shards"]]
    stages = [k.removeprefix("stage.") for k in parts[0] if k.startswith("stage.")]
    features = {stage: torch.cat([p[f"stage.{stage}"] for p in parts]) for stage in stages}
    return features, torch.cat([p["labels"] for p in parts]), torch.cat([p["indices"] for p in parts])
