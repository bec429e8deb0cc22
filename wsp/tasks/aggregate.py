"""task=aggregate: the runs under a folder (a Hydra sweep, a demo run) as one table, a row per run: its
metrics and its resolved config, both flattened to dotted keys, plus the run's folder. A run of
`study.seeds` replicates is one study point: its row has each metric's mean, sd, n and 95% interval.

A run is an outermost results.json: the stages of a study job (its sub-folders) are part of the job's
row, and the inputs a sweep builds once for its jobs (study.cache, marked by built_from.json) are not
runs."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
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


def with_intervals(metrics: dict) -> dict:
    """Beside each metric replicated over seeds (`<key>/sd`, `<key>/n` from study.seeds), `<key>/ci95`: the
    half-width of its mean's 95% confidence interval, t-distributed (sd / sqrt(n) x t(0.975, n - 1))."""
    from scipy.stats import t

    intervals = {}
    for key in metrics:
        if key.endswith("/sd") and f"{key[:-3]}/n" in metrics:
            sd, n = metrics[key], metrics[f"{key[:-3]}/n"]
            intervals[f"{key[:-3]}/ci95"] = (
                float(t.ppf(0.975, n - 1) * sd / n**0.5) if n > 1 else float("nan")
            )
    return {**metrics, **intervals}


def run_results(folder: Path) -> list[Path]:
    found = sorted(folder.rglob("results.json"))
    runs = {f.parent for f in found}

    def is_run(file: Path) -> bool:
        above = file.parent.relative_to(folder).parents
        return (
            not any((folder / p) in runs or (folder / p / "built_from.json").exists() for p in above)
            and not (file.parent / "built_from.json").exists()
        )

    return [f for f in found if is_run(f)]


def aggregate(folder: Path, table_format: str = "csv") -> tuple[int, int, Path]:
    """Write <folder>/results.<format>; return its rows, its columns and its path."""
    import pandas as pd

    files = run_results(folder)
    if not files:
        raise ConfigError(f"task.sweep={folder}: no results.json under it")
    rows = []
    for file in files:
        results = json.loads(file.read_text())
        config = results.pop("config", {})
        rows.append({"run": str(file.parent.relative_to(folder)), **with_intervals(flatten(results)),
                     **flatten(config, "config.")})  # fmt: skip
    table = pd.DataFrame(rows)
    out = folder / f"results.{table_format}"
    if table_format == "csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    return len(table), len(table.columns), out


def run(cfg: DictConfig) -> dict:
    folder = Path(require(cfg, "task.sweep"))
    require_choice(cfg, "task.format", ("csv", "parquet"))
    rows, columns, out = aggregate(folder, cfg.task.format)
    return {"rows": rows, "columns": columns, "table": str(out)}


class AggregateWhenSweepEnds(Callback):
    """A Hydra callback (the study experiments set it): when a multirun ends, its folder's results.csv."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        rows, _, out = aggregate(Path(config.hydra.sweep.dir))
        print(f"[aggregate] {rows} runs -> {out}")
