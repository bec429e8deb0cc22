"""task=aggregate: every results.json under a folder (a Hydra sweep, a demo run) as one table, a row
per run: its metrics and its resolved config, both flattened to dotted keys, plus the run's folder."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from wsp.config import ConfigError, require, require_choice


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dicts to dotted keys; lists become JSON text so every cell is a scalar."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def run(cfg: DictConfig) -> dict:
    import pandas as pd

    folder = Path(require(cfg, "task.sweep"))
    require_choice(cfg, "task.format", ("csv", "parquet"))
    files = sorted(folder.rglob("results.json"))
    if not files:
        raise ConfigError(f"task.sweep={folder}: no results.json under it")
    rows = []
    for file in files:
        results = json.loads(file.read_text())
        config = results.pop("config", {})
        rows.append(
            {"run": str(file.parent.relative_to(folder)), **flatten(results), **flatten(config, "config.")}
        )
    table = pd.DataFrame(rows)
    out = folder / f"results.{cfg.task.format}"
    if cfg.task.format == "csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    return {"rows": len(rows), "columns": len(table.columns), "table": str(out)}
