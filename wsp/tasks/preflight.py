"""task=preflight: the command a lab runs on a new GPU node before a weeks-long job.

Within minutes on one GPU it exercises every part a pretraining run depends on, on photo-sized JPEGs:
the corpus builder, the real loader feeding `model` (resnext101_32x8d by default) in bf16 + channels_last
with and without torch.compile, DDP over every local GPU (`trainer=gpu_node`), a checkpoint written and a
run resumed from it, and a linear probe of the exported backbone. It prints one table (images/s per GPU,
MFU, data-wait fraction, peak GPU memory, checkpoint write time) and the GPU-days of each study of the
paper at the throughput it measured, and records all of it in results.json.

Each pretraining and the probe run as their own `python run.py task=... ` process, as a user would start
them, so Lightning's DDP launcher starts one process per GPU for each alone.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from wsp.config import ConfigError, require_positive
from wsp.tasks import run_task
from wsp.tasks.study import compose_stage, job_overrides

log = logging.getLogger(__name__)
RUN = Path(__file__).resolve().parents[2] / "run.py"


def run(cfg: DictConfig) -> dict:
    from wsp.corpus.photos import write_photos

    t = cfg.task
    require_positive(cfg, "task.photos", "task.images", "task.resume_images", "task.checkpoint_every")
    if not t.compile:
        raise ConfigError("task.compile is empty: give the configurations to run, e.g. [false, true]")
    out = Path(cfg.output_dir)
    photos, posts = write_photos(out / "photos", t.photos, val_every=5, long_side=t.photo_side)
    corpus = out / "corpus"
    # the stages in this process take this job's corpus and model settings (preflight's defaults included)
    values = {"corpus.input": str(posts), "corpus.output": str(corpus), "output_dir": str(corpus)}
    run_task(compose_stage("corpus", job_overrides(), values, OmegaConf.create({"corpus": cfg.corpus})))
    runs = {}
    for compiled in t.compile:
        name = "compiled" if compiled else "eager"
        runs[name] = pretrain(cfg, out / f"pretrain-{name}", corpus, t.images, f"model.compile={compiled}")
        if "train/images_per_s_per_device" not in runs[name]:
            raise ConfigError(f"task.images={t.images}: too few steps to measure throughput over "
                              f"trainer.log_every_n_steps={cfg.trainer.log_every_n_steps}; raise task.images")  # fmt: skip
    first = out / f"pretrain-{'compiled' if t.compile[0] else 'eager'}"
    resumed = pretrain(
        cfg, first, corpus, t.images + t.resume_images, f"model.compile={t.compile[0]}", "ckpt_path=last"
    )
    if resumed["images_processed"] != t.images + t.resume_images:
        raise RuntimeError(f"the resumed run processed {resumed['images_processed']} images, not {t.images} + "
                           f"{t.resume_images}: see {first}")  # fmt: skip
    probe = subtask(cfg, "probe", out / "probe", "data=imagefolder", f"data.root={photos}",
                    f"backbone.weights={first / 'backbone.safetensors'}", "model.compile=false")  # fmt: skip
    results = summarise(cfg, runs, probe)
    print_table(results)
    return results


def pretrain(cfg: DictConfig, folder: Path, corpus: Path, images: int, *overrides: str) -> dict:
    """`python run.py task=pretrain` on the preflight corpus, into `folder`; its results."""
    return subtask(cfg, "pretrain", folder, f"data.path={corpus}", f"task.images={images}",
                   f"task.checkpoint_every={cfg.task.checkpoint_every}", *overrides)  # fmt: skip


def subtask(cfg: DictConfig, task: str, folder: Path, *overrides: str) -> dict:
    """`python run.py task=<task>` with this job's model, trainer, logger and data settings, into `folder`;
    its results. A process of its own: its Trainer launches its own DDP ranks, which re-run this command,
    not the whole preflight."""
    choices = HydraConfig.get().runtime.choices
    command = [sys.executable, str(RUN), f"task={task}", f"model={choices['model']}", f"trainer={choices['trainer']}",
               f"logger={choices['logger']}", *job_overrides(), f"data.batch_size={cfg.data.batch_size}",
               f"data.num_workers={cfg.data.num_workers}", f"hydra.run.dir={folder}", *overrides]  # fmt: skip
    log.info(" ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"task={task} in {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads((folder / "results.json").read_text())


def summarise(cfg: DictConfig, runs: dict[str, dict], probe: dict) -> dict:
    import torch

    from wsp.models.stats import model_stats
    from wsp.utils.compute import peak_tflops, study_gpu_days

    _, macs = model_stats(cfg.model.name, cfg.model.image_size, 1000)
    peak = peak_tflops(torch.device("cuda")) if torch.cuda.is_available() else None
    results = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "gpus": torch.cuda.device_count(), "model": cfg.model.name, "image_size": cfg.model.image_size,
               "batch_per_device": cfg.data.batch_size, "probe/top1": probe["probe/top1"]}  # fmt: skip
    for name, r in runs.items():
        rate = r["train/images_per_s_per_device"]
        results[name] = {
            "images_per_s_per_device": rate,
            "mfu": rate * 3 * 2 * macs / (peak * 1e12) if peak else None,
            "data_wait_fraction": r["train/data_wait_fraction"],
            "peak_memory_gib": r["train/peak_memory_gib"],
            "checkpoint_write_s": r["checkpoint/write_s"],
            "checkpoint_gib": r["checkpoint/gib"],
        }
    best = max(results[name]["images_per_s_per_device"] for name in runs)
    results["macs_per_s_per_device"] = 3 * macs * best  # training: forward + backward = 3 x forward
    results["study_gpu_days"] = {study: row["gpu_days"] for study, row in
                                 study_gpu_days(results["macs_per_s_per_device"]).items()}  # fmt: skip
    return results


def print_table(results: dict) -> None:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    runs = [name for name in ("eager", "compiled") if name in results]
    print(f"\n{results['device']} x {max(1, results['gpus'])}, {results['model']} at {results['image_size']} px, "
          f"{results['batch_per_device']} images per device and step\n")  # fmt: skip
    print("| | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs))
    rows = [("images/s per device", "images_per_s_per_device", ",.0f"), ("MFU", "mfu", ".1%"),
            ("data-wait fraction", "data_wait_fraction", ".1%"), ("peak device memory (GiB)", "peak_memory_gib", ".1f"),
            ("checkpoint write (s)", "checkpoint_write_s", ".2f"), ("checkpoint size (GiB)", "checkpoint_gib", ".2f")]  # fmt: skip
    for label, key, spec in rows:
        print(f"| {label} | " + " | ".join(fmt(results[name][key], spec) for name in runs) + " |")
    print(
        f"\nlinear probe top-1 on the photos' held-out split: {results['probe/top1']:.1f} (random photos: chance)"
    )
    print(
        f"\nGPU-days of each study at {results['macs_per_s_per_device']:.3g} mult-adds/s per GPU (the best above):"
    )
    print("| study | GPU-days |\n|---|---|")
    for study, days in results["study_gpu_days"].items():
        print(f"| {study} | {days:,.0f} |")
