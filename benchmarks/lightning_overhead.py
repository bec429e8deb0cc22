"""Lightning's cost per training step: the wsp Classifier under pl.Trainer vs a plain PyTorch loop running
the same module, loss, optimizer, lr schedule and in-memory batches, on CPU.

    .venv/bin/python benchmarks/lightning_overhead.py --model wsp_resnext_small --image-size 64 --steps 60

Two Lightning set-ups are timed: `bare` (no logger, checkpoints or progress bar) and `as run` (what
task=pretrain uses: CSV logger, progress bar, the Throughput callback). Each timing skips the first
`--warmup` steps and repeats `--repeats` times, alternating, keeping the fastest (least disturbed) run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from wsp.models.classifier import Classifier
from wsp.models.losses import classification_loss
from wsp.utils.throughput import Throughput

OPTIM = dict(base_lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_norm_and_bias=True,
             warmup_fraction=0.05, schedule="step", halvings=20)  # fmt: skip


class InMemoryBatches(pl.LightningDataModule):
    def __init__(self, batches: list, batch_size: int):
        super().__init__()
        self.batches, self.batch_size = batches, batch_size

    def train_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


class StepClock(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.started = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def make_batches(steps: int, batch_size: int, size: int, classes: int) -> list:
    generator = torch.Generator().manual_seed(0)
    targets = torch.softmax(torch.randn(batch_size, classes, generator=generator), dim=1)
    return [(torch.randn(batch_size, 3, size, size, generator=generator), targets, torch.tensor(0))
            for _ in range(steps)]  # fmt: skip


def time_lightning(args, batches, as_run: bool) -> float:
    torch.manual_seed(0)
    model = Classifier(args.model, args.classes, OPTIM)
    clock = StepClock(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=len(batches), logger=pl.loggers.CSVLogger(out) if as_run else False,
            enable_checkpointing=False, enable_progress_bar=as_run, enable_model_summary=False,
            callbacks=[clock, Throughput()] if as_run else [clock], log_every_n_steps=10, num_sanity_val_steps=0,
            default_root_dir=out,
        )  # fmt: skip
        trainer.fit(model, datamodule=InMemoryBatches(batches, args.batch_size))
    return clock.seconds


def time_plain(args, batches) -> float:
    """The same work by hand: forward, fp32 loss, backward, SGD step, lr schedule step."""
    torch.manual_seed(0)
    model = Classifier(args.model, args.classes, OPTIM)
    trainer_stub = pl.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False)
    model.trainer = trainer_stub  # configure_optimizers reads the schedule length and batch size from it
    trainer_stub.datamodule = InMemoryBatches(batches, args.batch_size)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    model.train()
    for step, (images, targets, _) in enumerate(batches):
        if step == args.warmup:
            started = time.perf_counter()
        loss = classification_loss("softmax", model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="wsp_resnext_small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batches = make_batches(args.steps, args.batch_size, args.image_size, args.classes)
    best = {"plain": float("inf"), "lightning bare": float("inf"), "lightning as run": float("inf")}
    for _ in range(args.repeats):
        best["plain"] = min(best["plain"], time_plain(args, batches))
        best["lightning bare"] = min(best["lightning bare"], time_lightning(args, batches, as_run=False))
        best["lightning as run"] = min(best["lightning as run"], time_lightning(args, batches, as_run=True))
    timed = args.steps - args.warmup
    print(f"{args.model} {args.image_size}px, batch {args.batch_size}, {timed} timed steps, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for name, seconds in best.items():
        overhead = 100 * (seconds / best["plain"] - 1)
        print(f"{name:18s} {1000 * seconds / timed:8.1f} ms/step  {overhead:+6.1f}% vs plain")


if __name__ == "__main__":
    main()
