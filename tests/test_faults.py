"""A rank that fails stops the whole DDP job promptly, its error printed: run.py under trainer=ddp_cpu.

The fault is injected from outside the product: a `sitecustomize.py` on the job's PYTHONPATH, which
Python imports at start-up in every process of the job, makes Classifier.training_step raise at step 2
in the process of one rank only (Lightning starts rank 1 with LOCAL_RANK=1; rank 0 has none at start).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAULT = """
import os

if os.environ.get("LOCAL_RANK", "0") == "{rank}":
    from wsp.models.classifier import Classifier

    training_step = Classifier.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 2:
            raise ValueError("injected fault: rank {rank} fails at step 2")
        return training_step(self, batch, batch_idx)

    Classifier.training_step = failing_step
"""


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 0])  # a rank Lightning launched, and the launching one
def test_a_rank_that_fails_stops_the_ddp_job_promptly_with_its_error(tmp_path, corpus_dir, rank):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAULT.format(rank=rank))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
    }
    started = time.monotonic()
    # 40 steps planned; the collective timeout is 30 min. Every process of the job holds stderr, so this
    # returns once all of them (other ranks, loader workers) are gone.
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), "task=pretrain", "trainer=ddp_cpu",
                           f"data.path={corpus_dir}", "task.images=640", "data.batch_size=8", "data.num_workers=1",
                           "model.image_size=32", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode != 0 and elapsed < 120
    assert f"ValueError: injected fault: rank {rank} fails at step 2" in done.stderr, done.stderr[-3000:]
    assert f"rank {rank} of 2 failed: stopping the job" in done.stderr
    assert not (tmp_path / "run" / "results.json").exists()
