"""Start-up checks of a composed config: a wrong value fails in one line naming the key."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


# trainer=torchrun derives the node count from torchrun's environment: WORLD_SIZE / LOCAL_WORLD_SIZE.
if not OmegaConf.has_resolver("div"):
    OmegaConf.register_new_resolver("div", lambda a, b: int(a) // int(b))


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and what would be valid."""


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def require(cfg: DictConfig, key: str) -> object:
    value = OmegaConf.select(cfg, key)
    if value is None or value == "":
        raise ConfigError(f"{key} is required for task={cfg.task.name}")
    return value


def require_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{key}={value}: must be a number > 0")


def require_choice(cfg: DictConfig, key: str, valid: tuple[str, ...] | list[str]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in valid:
        raise ConfigError(f"{key}={value}: valid are {', '.join(valid)}")


def check_training(cfg: DictConfig) -> None:
    """Keys every training task (pretrain, finetune) uses."""
    from wsp.models.backbones import check_model_name
    from wsp.models.losses import LOSSES
    from wsp.utils.schedule import SCHEDULES

    require_positive(cfg, "optim.base_lr", "data.batch_size", "model.image_size")
    if not 0 <= cfg.optim.weight_decay < 1:
        raise ConfigError(f"optim.weight_decay={cfg.optim.weight_decay}: must be in [0, 1)")
    if not 0 <= cfg.optim.warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction={cfg.optim.warmup_fraction}: must be in [0, 1)")
    require_choice(cfg, "optim.schedule", SCHEDULES)
    require_choice(cfg, "model.loss", LOSSES)
    try:
        check_model_name(cfg.model.name)
    except ValueError as err:
        raise ConfigError(str(err)) from None
