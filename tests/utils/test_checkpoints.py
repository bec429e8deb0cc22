import pytest
import torch

from wsp.config import ConfigError
from wsp.utils.checkpoints import AtomicCheckpointIO


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


def test_a_truncated_checkpoint_is_reported_not_loaded(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ConfigError, match=f"ckpt_path={path}: truncated or corrupt checkpoint"):
        io.load_checkpoint(path)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        io.load_checkpoint(tmp_path / "missing.ckpt")
