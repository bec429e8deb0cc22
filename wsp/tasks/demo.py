"""task=demo, the embedded default: the whole pipeline on a synthetic corpus, on CPU, in minutes.

A study job (wsp/tasks/study.py) with three transfers, all into the run folder (conf/task/demo.yaml):
    synthetic -> corpus -> pretrain -> probe (pretrained), probe (random init), finetune (from scratch)
then a table and a bar chart of the three.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from wsp.tasks import study

RESULT_KEYS = {
    "probe_pretrained/top1": "linear probe on the hashtag-pretrained backbone",
    "probe_random/top1": "linear probe on a randomly initialised backbone",
    "scratch/top1": "the same network trained from scratch on the target",
}


def run(cfg: DictConfig) -> dict:
    from pytorch_lightning.utilities import rank_zero_only

    results = study.run(cfg)
    if rank_zero_only.rank == 0:  # under DDP every rank ran the study; one reports it
        print(format_table(results))
        plot(results, Path(cfg.output_dir) / "demo.png")
    return results


def margin(results: dict) -> float:
    """What pretraining gains over the better baseline, in top-1 points."""
    return results["probe_pretrained/top1"] - max(results["probe_random/top1"], results["scratch/top1"])


def format_table(results: dict) -> str:
    """The three numbers; with `study.seeds` > 1 each as mean ± sd (n), then every replicate's."""
    lines = ["", "Transfer to the synthetic target task (top-1 %, held-out split):"]
    for key, text in RESULT_KEYS.items():
        spread = f" ± {results[f'{key}/sd']:4.1f} (n={results[f'{key}/n']})" if f"{key}/sd" in results else ""
        lines.append(f"  {key:24s} {results[key]:6.1f}{spread}   {text}")
    replicates = results.get("replicates", [])
    lines.append(f"  pretraining gains {margin(results):+.1f} points over the better baseline"
                 + (f" (the mean's; the smallest of the {len(replicates)} seeds: "
                    f"{min(margin(r) for r in replicates):+.1f})" if replicates else ""))  # fmt: skip
    for run in replicates:
        numbers = "  ".join(f"{key.split('/')[0]} {run[key]:5.1f}" for key in RESULT_KEYS)
        lines.append(f"    seed {run['seed']}: {numbers}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["hashtag-pretrained\n+ linear probe", "random init\n+ linear probe", "trained from\nscratch"]
    values = [results[k] for k in RESULT_KEYS]
    spreads = [results.get(f"{k}/sd", 0.0) for k in RESULT_KEYS]  # error bars: one sd over the seeds
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(names, values, yerr=spreads, capsize=4, color=["#2a7ab0", "#9a9a9a", "#c47a2c"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("target top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("wsp demo: transfer from hashtag pretraining")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
