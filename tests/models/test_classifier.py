"""The Classifier under the real Trainer on CPU: the lr schedule across resumes on other layouts."""

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from wsp.config import ConfigError
from wsp.models.classifier import Classifier
from wsp.utils.schedule import lr_multiplier, peak_lr

OPTIM = dict(base_lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, decay_norm_and_bias=False,
             warmup_fraction=0.0, schedule="step", halvings=4)  # fmt: skip
SCHEDULE_IMAGES = 128  # the step schedule halves at every 128 / 5 images: several halvings after the resume


class RandomSoftTargets(pl.LightningDataModule):
    """Random images with soft targets; `batch_size` per device, as the Classifier's global batch reads."""

    def __init__(self, batch_size: int, classes: int = 5):
        super().__init__()
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        targets = torch.rand(256, classes, generator=generator)
        self.data = torch.utils.data.TensorDataset(
            torch.randn(256, 3, 32, 32, generator=generator), targets / targets.sum(1, keepdim=True)
        )

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.data, batch_size=self.batch_size)


class RecordLr(pl.Callback):
    """(images processed before the step, the optimizer's lr) at every training step."""

    def __init__(self):
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((pl_module.images_processed, trainer.optimizers[0].param_groups[0]["lr"]))


def fit(batch_size: int, steps: int, ckpt_path: Path | None = None) -> tuple[pl.Trainer, RecordLr]:
    model = Classifier("wsp_resnext_tiny", 5, OPTIM, channels_last=False, schedule_images=SCHEDULE_IMAGES)
    record = RecordLr()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, callbacks=[record], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=RandomSoftTargets(batch_size), ckpt_path=ckpt_path)
    return trainer, record


@pytest.mark.parametrize(("before", "after"), [(16, 8), (8, 16)])  # as 2 -> 1 ranks, and 1 -> 2
def test_a_resume_on_another_global_batch_trains_at_its_own_peak_lr(tmp_path, before, after):
    trainer, _ = fit(before, steps=3)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    _, record = fit(after, steps=3 + 5, ckpt_path=tmp_path / "last.ckpt")

    def scheduled(images: int) -> float:
        return peak_lr(OPTIM["base_lr"], after) * lr_multiplier(
            images, total=SCHEDULE_IMAGES, warmup=0, warmup_start=1.0, schedule="step", halvings=4
        )

    assert [images for images, _ in record.seen] == [3 * before + i * after for i in range(5)]
    assert len({lr for _, lr in record.seen}) > 1  # the schedule moved during the resumed steps
    assert record.seen == [(images, pytest.approx(scheduled(images), rel=1e-9)) for images, _ in record.seen]


def test_a_checkpoint_without_images_processed_is_refused_in_one_line(tmp_path):
    trainer, _ = fit(8, steps=1)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    del checkpoint["images_processed"]
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    expected = f"ckpt_path={tmp_path / 'foreign.ckpt'}: the checkpoint lacks images_processed"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        fit(8, steps=2, ckpt_path=tmp_path / "foreign.ckpt")
