"""A rank that fails ends the whole job at once, its error printed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback

import pytorch_lightning as pl
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from wsp.config import ConfigError


class StopJobOnError(pl.Callback):
    """Under DDP, a rank whose fit, validate or predict raises prints the error and exits at once, taking
    with it the ranks it launched (Lightning's subprocess launcher, trainer=ddp_cpu/gpu: rank 0) and its
    data loader workers. The other ranks wait in their next collective until this process is gone; then
    gloo fails them, or the launcher kills them (Lightning's process observer, torchrun's agent): NCCL
    does not notice a dead peer. Unwinding normally could itself wait on a collective still queued on
    the GPU (Lightning's teardown moves the model to the CPU), and Lightning kills the ranks rank 0
    launched only on KeyboardInterrupt. KeyboardInterrupt and SIGTERM keep Lightning's handling."""

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.world_size == 1 or not isinstance(exception, Exception):
            return
        for logger in trainer.loggers:
            logger.finalize("failed")
        if isinstance(exception, ConfigError | FloatingPointError):  # as run.py reports them: one line
            print(f"error: {exception}", file=sys.stderr)
        else:
            traceback.print_exception(exception, file=sys.stderr)
        print(f"rank {trainer.global_rank} of {trainer.world_size} failed: stopping the job", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(signal.SIGKILL)
        for worker in multiprocessing.active_children():
            worker.kill()
        os._exit(1)
