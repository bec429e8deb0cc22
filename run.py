"""wsp's entry point: `python run.py [group=choice ...] [key=value ...]` runs task `cfg.task.name`.

python run.py                                   # the demo: synthetic corpus -> pretrain -> transfer
python run.py task=corpus corpus.input='/data/posts/*.jsonl' corpus.output=/data/ig-in1k
python run.py task=pretrain data.path=/data/ig-in1k model=resnext101_32x16d trainer=gpu
python run.py task=probe data.root=/data/target backbone.weights=runs/.../backbone.safetensors
python run.py --cfg job                         # print the composed config
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from wsp.config import CONF_DIR, ConfigError, group_choices


def check_group_choices(args: list[str]) -> None:
    """Fail in one line on an unknown config choice (`model=nope`), before Hydra's multi-line error."""
    candidates = [
        a for a in args if not a.startswith("-") and "=" in a and not a.startswith(("hydra", "+", "~"))
    ]
    for override in OverridesParser.create().parse_overrides(candidates):
        group = override.key_or_group
        if "." in group or "@" in group or not (CONF_DIR / group).is_dir():
            continue
        values = (
            override.sweep_string_iterator()
            if override.is_sweep_override()
            else [override.get_value_element_as_str()]
        )
        for value in values:
            if value not in ("null", *group_choices(group)):
                raise ConfigError(
                    f"{group}={value} is not a config choice; valid: {', '.join(group_choices(group))}"
                )


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from wsp.tasks import TASKS, run_task

    try:
        if cfg.task.name not in TASKS:
            raise ConfigError(f"task={cfg.task.name}: valid are {', '.join(TASKS)}")
        run_task(cfg)
    except (ConfigError, FloatingPointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:])
    except ConfigError as err:
        sys.exit(f"error: {err}")
    main()
