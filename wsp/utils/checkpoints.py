"""Lightning checkpoints that are never half-written, and a clear error for one that is."""

from __future__ import annotations

import pickle
import time
import zipfile
from pathlib import Path

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from wsp.config import ConfigError
from wsp.utils.files import durable_replace


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a hidden file beside the target, fsync, rename over it, fsync the folder: a process killed
    (or a machine losing power) mid-write leaves the previous checkpoint intact. Loading a truncated or
    corrupt file fails in one line."""

    def __init__(self):
        super().__init__()
        self.write_seconds: list[float] = []  # each save's, for the run's results

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        started = time.perf_counter()
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        durable_replace(partial, path)
        self.write_seconds.append(time.perf_counter() - started)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if not Path(path).is_file():
            raise ConfigError(f"ckpt_path={path}: no such checkpoint file")
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            reason = str(err).strip().splitlines()[0]
            raise ConfigError(
                f"ckpt_path={path}: truncated or corrupt checkpoint ({reason}); remove it to resume from an "
                "earlier one"
            ) from None


class LastCheckpoint(ModelCheckpoint):
    """One checkpoint file, `last.ckpt`, written once per save (every `every_n_train_steps`, else at epoch
    ends) and at the end of training; `ckpt_path=last` finds it. Lightning's `save_last=True` writes each
    save twice (a top-k file, then last.ckpt): 2 x 10 GB for the 32x48d with its momentum."""

    def __init__(self, dirpath, every_n_train_steps: int | None = None):
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)  # fmt: skip

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last_global_step_saved != trainer.global_step:  # the final steps since the last save
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
