"""results.json: what every run leaves in its output folder (config, metrics, wall time)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _plain(value):
    """JSON-safe metrics: tensors to numbers, non-finite floats to null."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(cfg: DictConfig, metrics: dict, wall_time_s: float) -> dict:
    results = {
        "task": cfg.task.name,
        **{k: _plain(v) for k, v in metrics.items()},
        "wall_time_s": round(wall_time_s, 2),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
