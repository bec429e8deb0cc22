"""task=study: one job of a study of the paper, the pipeline end to end.

    [synthetic posts ->] corpus -> pretrain -> transfer to each target (linear probe or fine-tuning)

`python run.py -m experiment=<study>` runs one job per point of the study's sweep (conf/experiment/,
conf/study/<study>/<scale>.yaml). Each stage is the task a user runs alone (task=corpus, pretrain, probe,
finetune), composed from the same config files with the job's overrides, so a swept `model=...` reaches
every stage; each writes its results.json into a sub-folder of the job's folder.

The synthetic posts and each corpus depend on their config only, so the jobs of a sweep build each one
once, under a file lock, in `study.cache`, and share it. A job run again in its folder redoes only what
did not finish: a finished stage's results.json is read back, pretraining resumes from its checkpoint,
and the job's wandb run continues.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from wsp.config import ConfigError, require, require_choice, require_positive
from wsp.tasks import run_task
from wsp.utils.loggers import open_wandb_run

log = logging.getLogger(__name__)  # Hydra writes it to the console and to <job>/<job name>.log
SOURCES = ("synthetic", "posts", "corpus")
INITS = ("pretrained", "random")


def run(cfg: DictConfig) -> dict:
    s = cfg.study
    require_choice(cfg, "study.source", SOURCES)
    require_choice(cfg, "study.pretraining", ("hashtags", "none"))
    require_positive(cfg, "study.seeds")
    transfers = {name: _transfer(cfg, name) for name in s.transfers}
    out = Path(cfg.output_dir)
    run_name = f"{s.name or cfg.task.name}-{out.name}"
    with open_wandb_run(cfg, name=run_name, tags=[s.name, s.scale]) as wandb_run:
        if s.seeds == 1:
            results = replicate(cfg, transfers, cfg.seed, "")
        else:  # replicate r trains with seed + r (weights, stream order, crops, probe holdout) on the same corpus
            runs = [replicate(cfg, transfers, cfg.seed + r, f"seed{cfg.seed + r}/") for r in range(s.seeds)]
            results = summarise(runs)
        if wandb_run is not None:
            wandb_run.summary.update({k: v for k, v in results.items() if k != "replicates"})
    return results


def replicate(cfg: DictConfig, transfers: dict, seed: int, folder: str) -> dict:
    """The pipeline once, its stages in <output_dir>/<folder><stage>, every stage with `seed`."""
    s, results, weights = cfg.study, {"seed": seed}, None
    if s.pretraining == "hashtags":
        corpus = corpus_folder(cfg)
        results.update(corpus_summary(corpus))
        pretrained = stage(cfg, f"{folder}pretrain", "pretrain", {"data.path": str(corpus), "seed": seed},
                           s.pretrain)  # fmt: skip
        weights = pretrained["backbone"]
        results.update(_prefixed("pretrain", pretrained, "val/top1", "val/top5", "steps",
                                 "train/images_per_s", "train/time_s", "wall_time_s"))  # fmt: skip
        results["images_processed"] = pretrained["images_processed"]
    for name, transfer in transfers.items():
        values = {
            "data.root": transfer["root"],
            "backbone.weights": weights if transfer["init"] == "pretrained" else None,
            "seed": seed,
        }
        done = stage(
            cfg, f"{folder}{name}", transfer["task"], values, transfer["values"], transfer["overrides"]
        )
        results.update({f"{name}/{key.split('/', 1)[1]}": value for key, value in done.items()
                        if key in (f"{transfer['task']}/top1", f"{transfer['task']}/top5")})  # fmt: skip
        results.update(_prefixed(name, done, "train/time_s", "wall_time_s"))  # train/time_s: fine-tuning only
    return results


def summarise(runs: list[dict]) -> dict:
    """Each numeric metric of the replicates as its mean (under its own key), `<key>/sd` (sample standard
    deviation) and `<key>/n`; other values as the first replicate has them; and `replicates`, each run's."""
    import statistics

    summary: dict = {}
    for key, value in runs[0].items():
        values = [run.get(key) for run in runs]
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if key != "seed" and len(numeric) == len(values):
            summary[key] = statistics.fmean(numeric)
            summary[f"{key}/sd"] = statistics.stdev(numeric)
            summary[f"{key}/n"] = len(numeric)
        elif key != "seed":
            summary[key] = value
    summary["replicates"] = runs
    return summary


def _transfer(cfg: DictConfig, name: str) -> dict:
    """A transfer target: {task: probe | finetune, data: a conf/data choice, root, init, values,
    scratch_values (merged over values when it starts from random weights: a from-scratch recipe)}."""
    key = f"study.transfers.{name}"
    require_choice(cfg, f"{key}.task", ("probe", "finetune"))
    require(cfg, f"{key}.data")
    t = cfg.study.transfers[name]
    if not t.root:
        raise ConfigError(
            f"{key}.root is not set: the {name} target's folder (full scale: study.roots.<dataset>=<folder>)"
        )
    init = t.get("init", "pretrained")
    if init not in INITS:
        raise ConfigError(f"{key}.init={init}: valid are {', '.join(INITS)}")
    if cfg.study.pretraining == "none":
        init = "random"
    values = OmegaConf.create(t.get("values") or {})
    if init == "random":
        values = OmegaConf.merge(values, t.get("scratch_values") or {})
    return {"task": t.task, "root": t.root, "init": init, "overrides": [f"data={t.data}"], "values": values}


def _prefixed(prefix: str, metrics: dict, *keys: str) -> dict:
    return {f"{prefix}/{key}": metrics[key] for key in keys if metrics.get(key) is not None}


# ---- stages: the tasks a user runs alone, composed as the command line would ----


def job_overrides() -> list[str]:
    """The job's command-line (and sweep) overrides, minus the job's own: those that pick or place its
    task, and `study.*` (a sweep of a pretraining-only setting goes through study.pretrain.<key>)."""
    if not HydraConfig.initialized():
        return []
    own = ("task", "output_dir", "hydra", "study")
    return [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(own)]


def stage(cfg: DictConfig, name: str, task: str, values: dict, stage_config: DictConfig | None = None,
          overrides: list[str] = ()) -> dict:  # fmt: skip
    """Run `task=<task>` into <output_dir>/<name>, or read back its results if it finished before. Under
    DDP every rank runs every stage: each task spreads its own work over the ranks."""
    out = Path(cfg.output_dir) / name
    finished = out / "results.json"
    if finished.is_file():
        log.info(f"{name}: finished before, reading {finished}")
        return _recorded(finished)
    values = {**values, "output_dir": str(out), "logger.prefix": name}
    if task in ("pretrain", "finetune") and (out / "checkpoints" / "last.ckpt").is_file():
        values["ckpt_path"] = "last"  # an interrupted job resumes where it stopped
    metrics = run_task(compose_stage(task, [*job_overrides(), *overrides], values, stage_config))
    return _recorded(finished) if finished.is_file() else metrics  # the first rank's record has the wall time


def _recorded(results_file: Path) -> dict:
    """A stage's results.json without its config."""
    return {k: v for k, v in json.loads(results_file.read_text()).items() if k != "config"}


def compose_stage(
    task: str, overrides: list[str], values: dict, stage_config: DictConfig | None = None
) -> DictConfig:
    """The config `python run.py task=<task> <overrides>` would run, with `stage_config` merged in and
    `values` (dotted keys) set."""
    cfg = compose(config_name="config", overrides=[*overrides, f"task={task}"])
    with open_dict(cfg):
        cfg.pop("study", None)  # the job's, brought in by the experiment files; the stage has its own values
    if stage_config is not None:
        cfg = OmegaConf.merge(cfg, stage_config)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


# ---- shared inputs: built once per config, whichever job of the sweep gets there first ----


def fingerprint(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def built_once(folder: Path, build: Callable[[Path], None], config: dict) -> Path:
    """`folder`, built by `build(partial_folder)` unless a complete one exists. Concurrent jobs (SLURM
    arrays) wait on a lock; the folder appears by rename only when complete, so a job killed mid-build
    leaves no folder that looks finished, and the next one resumes the partial build."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        recorded = folder / "built_from.json"
        if folder.is_dir():
            if json.loads(recorded.read_text()) != config:
                raise ConfigError(f"{folder} was built from another config: use another study.cache")
            return folder
        partial = folder.with_name(folder.name + ".partial")
        build(partial)
        (partial / "built_from.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str))
        partial.rename(folder)
    return folder


def synthetic_folder(cfg: DictConfig) -> Path:
    folder = Path(cfg.study.synthetic).resolve()
    config = OmegaConf.to_container(cfg.synthetic, resolve=True)
    config.pop("output")

    def build(partial: Path) -> None:
        shutil.rmtree(partial, ignore_errors=True)  # generation is not resumable: start over
        stage_values = {"synthetic.output": str(partial), "output_dir": str(partial)}
        run_task(compose_stage("synthetic", job_overrides(), stage_values))

    return built_once(folder, build, config)


def corpus_folder(cfg: DictConfig) -> Path:
    """The corpus to pretrain on: data.path as given (source=corpus), or built from corpus.input (posts)
    or from the synthetic posts, once per corpus config, into study.cache/corpus-<vocabulary>-<hash>."""
    s = cfg.study
    if s.source == "corpus":
        return Path(require(cfg, "data.path"))
    values = {}
    if s.source == "synthetic":
        values["corpus.input"] = str(synthetic_folder(cfg) / "posts" / "*.jsonl")
    else:
        require(cfg, "corpus.input")
    corpus = compose_stage("corpus", job_overrides(), values)
    config = OmegaConf.to_container(corpus.corpus, resolve=True)
    for key in ("output", "workers", "stage", "part", "num_parts"):  # where and how, not what
        config.pop(key)
    folder = Path(s.cache).resolve() / f"corpus-{corpus.corpus.vocabulary}-{fingerprint(config)}"

    def build(partial: Path) -> None:
        for key, value in {"corpus.output": str(partial), "output_dir": str(partial)}.items():
            OmegaConf.update(corpus, key, value, merge=False)
        run_task(corpus)  # a partial build resumes from its per-unit results

    return built_once(folder, build, config)


def corpus_summary(folder: Path) -> dict:
    stats = json.loads((folder / "stats.json").read_text())
    return {
        "corpus/path": str(folder),
        "corpus/train_images": stats["written"]["train"],
        "corpus/val_images": stats["written"]["val"],
        "corpus/labels": stats["labels"]["kept"],
    }
