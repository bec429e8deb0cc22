import os
import stat
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from wsp.config import ConfigError
from wsp.utils.checkpoints import AtomicCheckpointIO, LastCheckpoint


def test_checkpoints_replace_the_old_file_whole_or_not_at_all(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert io.load_checkpoint(path)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(3), "bad": Unsaveable()}, path)
    assert io.load_checkpoint(path)["step"] == 2


def _recording(monkeypatch) -> list:
    """Record what each fsync was on and each rename; the real calls run."""
    calls, fsync, replace = [], os.fsync, os.replace

    def recording_fsync(fd):
        status = os.fstat(fd)
        calls.append(("fsync", "folder" if stat.S_ISDIR(status.st_mode) else "file", status.st_ino))
        fsync(fd)

    def recording_replace(src, dst):
        calls.append(("replace", Path(src).name, Path(dst).name))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return calls


def test_the_rename_is_made_durable_by_an_fsync_of_the_folder(tmp_path, monkeypatch):
    """The file's data is fsynced before the rename, the folder's entry after it (a power loss keeps the
    new checkpoint, or the old one)."""
    calls = _recording(monkeypatch)
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.ckpt")
    assert calls == [
        ("fsync", "file", (tmp_path / "last.ckpt").stat().st_ino),
        ("replace", ".last.ckpt.partial", "last.ckpt"),
        ("fsync", "folder", tmp_path.stat().st_ino),
    ]


def test_corpus_shards_their_index_and_feature_shards_are_durable_renames(tmp_path, monkeypatch):
    """Every file the corpus writer and the feature cache put in place: its data fsynced, renamed, its
    folder fsynced."""
    from wsp.corpus.shards import write_labelled_corpus
    from wsp.models.features import write_shard

    calls = _recording(monkeypatch)
    write_labelled_corpus(
        tmp_path / "corpus", ((f"k{i}", b"jpeg bytes", [i % 2]) for i in range(6)), [3, 3], 2
    )
    write_shard(
        tmp_path / "train-00000.safetensors", {"res5": torch.ones(2, 4)}, torch.zeros(2), torch.arange(2)
    )
    renames = [i for i, call in enumerate(calls) if call[0] == "replace"]
    targets = {call[2] for call in calls if call[0] == "replace"}
    assert (
        len([t for t in targets if t.endswith(".tar")]) == 2
        and {"offsets.npy", "keys.npy", "names.npy"} <= targets
    )
    assert "train-00000.safetensors" in targets
    for i in renames:
        assert calls[i - 1][:2] == ("fsync", "file") and calls[i + 1][:2] == ("fsync", "folder"), calls[i]


def test_a_truncated_checkpoint_is_reported_not_loaded(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=f"ckpt_path={path}: truncated or corrupt checkpoint"):
        io.load_checkpoint(path)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


class RecordingIO(AtomicCheckpointIO):
    """Records the file name of every checkpoint write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        super().save_checkpoint(checkpoint, path, storage_options)
        self.writes.append(Path(path).name)


class TinyRegression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("every", "steps", "writes"), [(2, 5, 3), (2, 4, 2), (None, 5, 2)])
def test_each_save_writes_last_ckpt_once_and_training_ends_saved(tmp_path, every, steps, writes):
    """Every `every` steps (else each epoch: 3 batches here) and at the end, one write of last.ckpt."""
    data = torch.utils.data.TensorDataset(torch.randn(12, 4), torch.randn(12, 1))
    io = RecordingIO()
    trainer = pl.Trainer(max_steps=steps, callbacks=[LastCheckpoint(tmp_path, every_n_train_steps=every)], plugins=[io],
                         logger=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(TinyRegression(), torch.utils.data.DataLoader(data, batch_size=4))
    assert io.writes == ["last.ckpt"] * writes and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(tmp_path / "last.ckpt")["global_step"] == steps
