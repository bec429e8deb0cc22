"""task=model_stats: parameters and multiply-adds of each model, beside the paper's numbers."""

from __future__ import annotations

from omegaconf import DictConfig

from wsp.config import ConfigError, require_positive


def run(cfg: DictConfig) -> dict:
    from wsp.models.stats import PAPER, model_stats

    require_positive(cfg, "task.image_size", "task.num_classes")
    rows = {}
    print(
        f"\n{'model':22s} {'params':>9s} {'paper':>7s} {'mult-adds':>10s} {'paper':>7s}   at {cfg.task.image_size}px"
    )
    for name in cfg.task.models:
        try:
            params, mult_adds = model_stats(name, cfg.task.image_size, cfg.task.num_classes)
        except ValueError as err:
            raise ConfigError(f"task.models: {err}") from None
        paper_params, paper_mult_adds = PAPER.get(name, (None, None))
        rows[name] = {"params": params, "mult_adds": mult_adds, "paper_params": paper_params,
                      "paper_mult_adds": paper_mult_adds}  # fmt: skip
        print(f"{name:22s} {params / 1e6:8.1f}M {_fmt(paper_params, 1e6, 'M'):>7s} {mult_adds / 1e9:9.2f}G "
              f"{_fmt(paper_mult_adds, 1e9, 'G'):>7s}")  # fmt: skip
    return {"models": rows}


def _fmt(value: float | None, unit: float, suffix: str) -> str:
    return "—" if value is None else f"{value / unit:.0f}{suffix}"
