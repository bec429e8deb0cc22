"""Bytes written per checkpoint save: Lightning's `ModelCheckpoint(save_last=True)` (what wsp used) vs
wsp's `LastCheckpoint` (one `last.ckpt`, written once a save), on the real Classifier with SGD momentum.

    .venv/bin/python benchmarks/checkpoint_writes.py                      # ResNeXt-101 32x8d, 1k classes
    .venv/bin/python benchmarks/checkpoint_writes.py --model wsp_resnext_small

Trains `--steps` steps on in-memory batches of small images (the checkpoint's size does not depend on
the image size) with a save every `--every` steps, through wsp's atomic CheckpointIO, and records each
write: file, bytes, seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_overhead import OPTIM, InMemoryBatches, make_batches
from pytorch_lightning.callbacks import ModelCheckpoint

from wsp.models.classifier import Classifier
from wsp.utils.checkpoints import AtomicCheckpointIO, LastCheckpoint


class MeasuredIO(AtomicCheckpointIO):
    def __init__(self):
        super().__init__()
        self.writes: list[tuple[str, int, float]] = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        started = time.perf_counter()
        super().save_checkpoint(checkpoint, path, storage_options)
        self.writes.append((Path(path).name, Path(path).stat().st_size, time.perf_counter() - started))


def measure(args, callback_for) -> list[tuple[str, int, float]]:
    torch.manual_seed(0)
    batches = make_batches(args.steps, args.batch_size, args.image_size, args.classes)
    io = MeasuredIO()
    with tempfile.TemporaryDirectory() as out:
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, plugins=[io],
                             callbacks=[callback_for(Path(out))], enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
        trainer.fit(
            Classifier(args.model, args.classes, OPTIM), datamodule=InMemoryBatches(batches, args.batch_size)
        )
    return io.writes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnext101_32x8d")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--every", type=int, default=2)
    args = parser.parse_args()
    setups = {
        "ModelCheckpoint(save_last=True)": lambda out: ModelCheckpoint(out, every_n_train_steps=args.every,
                                                                        save_last=True),
        "LastCheckpoint": lambda out: LastCheckpoint(out, every_n_train_steps=args.every),
    }  # fmt: skip
    saves = args.steps // args.every
    print(
        f"{args.model}, {args.classes} classes, SGD with momentum; {args.steps} steps, a save every {args.every}"
    )
    print("| callback | writes | files | GB written per save | seconds per save |\n|---|---|---|---|---|")
    for name, callback_for in setups.items():
        writes = measure(args, callback_for)
        files = sorted({file.split("=")[0] for file, _, _ in writes})
        gb = sum(size for _, size, _ in writes) / saves / 1e9
        seconds = sum(s for _, _, s in writes) / saves
        print(f"| {name} | {len(writes)} | {', '.join(files)} | {gb:.2f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
