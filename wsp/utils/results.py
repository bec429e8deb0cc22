"""results.json: what every run leaves in its output folder (config, metrics, wall time, host)."""

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


def host() -> dict:
    """What a run's numbers depend on beyond its config and seeds: the same seeds on another CPU (the
    kernels it picks) or another library build can train differently (README: Resampling)."""
    import platform

    import torch

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "node": platform.node(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the ATen kernels in use
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def write_results(cfg: DictConfig, metrics: dict, wall_time_s: float) -> dict:
    results = {
        "task": cfg.task.name,
        **{k: _plain(v) for k, v in metrics.items()},
        "wall_time_s": round(wall_time_s, 2),
        "host": host(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return results
