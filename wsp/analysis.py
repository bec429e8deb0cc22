"""What the study notebooks share: finding a sweep, its aggregated table, its error bars, and the paper's
numbers.

The numbers below are the paper's as summarised in shared/PAPER.md; the notebooks draw them next to the
measured ones. Only numbers the paper states are here: where it states a trend, the notebooks say so in
words instead of inventing points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsp.tasks.aggregate import aggregate

# IN-1k top-1 after pretraining on IG-940M-1.5k and full fine-tuning, by ResNeXt-101 32xCd group width C.
CAPACITY_IN1K_TOP1 = {8: 82.2, 16: 84.2, 32: 85.1, 48: 85.4}
# Label noise: transfer accuracy lost at p = 10% (under 1 point) and 25% (about 2 points).
LABEL_NOISE_COST = {0.0: 0.0, 0.10: 1.0, 0.25: 2.0}
RESAMPLING_GAIN_OVER_NATURAL = (5.0, 6.0)  # square-root or uniform, points of transfer accuracy
WIDTHS = {"resnext101_32x4d": 4, "resnext101_32x8d": 8, "resnext101_32x16d": 16, "resnext101_32x32d": 32,
          "resnext101_32x48d": 48}  # fmt: skip


def sweep_folder(study: str, root: str | Path = "../multirun") -> Path:
    """The sweep to read: $WSP_SWEEP, else the newest `multirun/<study>-<scale>/<time>` with results."""
    if os.environ.get("WSP_SWEEP"):
        return Path(os.environ["WSP_SWEEP"])
    found = [p.parent for p in Path(root).glob(f"{study}-*/*/*/results.json")]
    if not found:
        raise FileNotFoundError(f"no {study} sweep under {root}: run `python run.py -m experiment={study}`")
    return max(found, key=lambda p: p.stat().st_mtime).parent


def study_table(folder: Path) -> pd.DataFrame:
    """The sweep's table, a row per job (aggregated again, so a sweep still running shows its finished jobs)."""
    _, _, path = aggregate(Path(folder))
    return pd.read_csv(path).copy()  # consolidated: adding a column warns of fragmentation otherwise


def transfers(table: pd.DataFrame) -> list[str]:
    """The transfer targets of a study's table: the names of its `<target>/top1` columns."""
    return [c.split("/")[0] for c in table.columns if c.endswith("/top1") and not c.startswith("pretrain")]


def spread(data, columns: str | list[str]):
    """Error bars for a plot's `yerr`: one standard deviation over the seeds of `columns` (a job run with
    `study.seeds` > 1 records each metric's `<metric>/sd`), or None where the runs have no seeds (no bars).
    `data`: a study table (then a column, or a frame of them named as `columns`), one of its rows or a
    results.json dict (then a value, or a Series of them indexed by `columns`)."""
    if isinstance(columns, str):
        return data.get(f"{columns}/sd")
    found = [data.get(f"{column}/sd") for column in columns]
    if any(values is None for values in found):
        return None
    if isinstance(data, pd.DataFrame):
        return pd.concat(found, axis=1, keys=columns)
    return pd.Series(found, index=columns)


def spread_note(data, column: str) -> str:
    """What a plot's error bars of `column` are, as a second line for its axis label ("± 1 sd over <n>
    seeds"), or "" with no seeds. `data` as for `spread`."""
    counts = data.get(f"{column}/n")
    seeds = sorted({int(n) for n in np.ravel(counts) if pd.notna(n)}) if counts is not None else []
    if not seeds:
        return ""
    return f"\n± 1 sd over {'/'.join(map(str, seeds))} seeds"


def spread_columns(data, columns: list[str]) -> list[str]:
    """`columns` for a table to show, each followed by its `/sd` and `/n` where the runs have seeds."""
    return [f"{c}{stat}" for c in columns for stat in ("", "/sd", "/n") if not stat or f"{c}{stat}" in data]


def group_width(row: pd.Series) -> int | None:
    """A job's ResNeXt group width: the swept `model.kwargs.base_width`, else the paper model's C."""
    swept = row.get("config.model.kwargs.base_width")
    return int(swept) if pd.notna(swept) else WIDTHS.get(row["config.model.name"])


def model_label(row: pd.Series) -> str:
    """A model's name in plots: the config name, with a swept group width when there is one."""
    name = row["config.model.name"].removeprefix("wsp_")
    swept = pd.notna(row.get("config.model.kwargs.base_width"))
    return f"{name} (width {group_width(row)})" if swept else name


def curve_labels(table: pd.DataFrame) -> pd.Series:
    """A label per job naming its curve: the model, and the corpus vocabulary when the sweep has several
    (the data-size study's 17k and 1.5k curves)."""
    labels = table.apply(model_label, axis=1)
    vocabulary = table.get("config.corpus.vocabulary")
    if vocabulary is not None and vocabulary.nunique() > 1:
        labels = labels + ", " + vocabulary + " vocabulary"
    return labels


def save(fig, folder: Path, name: str) -> Path:
    """Save a figure as <sweep>/figures/<name>.png."""
    out = Path(folder) / "figures"
    out.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    return out / f"{name}.png"
