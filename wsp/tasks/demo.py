"""task=demo, the embedded default: the whole pipeline on a synthetic corpus, on CPU, in minutes.

Each stage is the same task a user runs alone, composed from the same config files with the same
overrides the user gave the demo, and reads the previous stage's output by path:
    synthetic -> corpus -> pretrain -> probe (pretrained), probe (random init), finetune (from scratch)
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from wsp.tasks import run_task

RESULT_KEYS = {
    "pretrained_probe_top1": "linear probe on the hashtag-pretrained backbone",
    "random_probe_top1": "linear probe on a randomly initialised backbone",
    "scratch_top1": "the same network trained from scratch on the target",
}


def _user_overrides() -> list[str]:
    """The demo's own command-line overrides, minus those that pick or configure the demo task itself."""
    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("task", "output_dir", "hydra"))]


def run_stage(task: str, overrides: list[str], values: dict, stage_config: DictConfig | None = None) -> dict:
    """Compose the config for `task=<task>` as the command line would, merge the demo's values, run it."""
    cfg = compose(config_name="config", overrides=[*overrides, f"task={task}"])
    if stage_config is not None:
        cfg = OmegaConf.merge(cfg, stage_config)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return run_task(cfg)


def run(cfg: DictConfig) -> dict:
    out = Path(cfg.output_dir)
    overrides = _user_overrides()
    stages = cfg.task.stages
    synthetic, corpus, target = out / "synthetic", out / "corpus", out / "synthetic" / "target"
    on_target = {"data.root": str(target)}

    run_stage("synthetic", overrides, {"output_dir": str(synthetic), "synthetic.output": str(synthetic)})
    run_stage(
        "corpus",
        overrides,
        {
            "output_dir": str(corpus),
            "corpus.output": str(corpus),
            "corpus.input": str(synthetic / "posts" / "*.jsonl"),
        },
    )
    pretrained = run_stage(
        "pretrain",
        overrides,
        {"output_dir": str(out / "pretrain"), "data.path": str(corpus)},
        stages.get("pretrain"),
    )
    pretrained_probe = run_stage(
        "probe",
        overrides,
        {
            **on_target,
            "output_dir": str(out / "probe_pretrained"),
            "backbone.weights": pretrained["backbone"],
        },
    )
    random_probe = run_stage(
        "probe", overrides, {**on_target, "output_dir": str(out / "probe_random"), "backbone.weights": None}
    )
    scratch = run_stage(
        "finetune",
        overrides,
        {**on_target, "output_dir": str(out / "scratch"), "backbone.weights": None},
        stages.get("scratch"),
    )

    results = {
        "pretrained_probe_top1": pretrained_probe["probe/top1"],
        "random_probe_top1": random_probe["probe/top1"],
        "scratch_top1": scratch["finetune/top1"],
        "pretrain_val_top1": pretrained.get("val/top1"),
        "pretrain_images_processed": pretrained["images_processed"],
        "corpus": json.loads((corpus / "stats.json").read_text())["written"],
    }
    print(format_table(results))
    plot(results, out / "demo.png")
    return results


def format_table(results: dict) -> str:
    lines = ["", "Transfer to the synthetic target task (top-1 %, held-out split):"]
    lines += [f"  {key:24s} {results[key]:6.1f}   {text}" for key, text in RESULT_KEYS.items()]
    margin = results["pretrained_probe_top1"] - max(results["random_probe_top1"], results["scratch_top1"])
    lines.append(f"  pretraining gains {margin:+.1f} points over the better baseline")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["hashtag-pretrained\n+ linear probe", "random init\n+ linear probe", "trained from\nscratch"]
    values = [results[k] for k in RESULT_KEYS]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(names, values, color=["#2a7ab0", "#9a9a9a", "#c47a2c"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("target top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("wsp demo: transfer from hashtag pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
