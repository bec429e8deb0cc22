import json
import shutil

import pytest
import torch

from wsp.config import ConfigError
from wsp.data.hashtags import HashtagDataModule


def datamodule(path, **kw):
    args = dict(batch_size=8, num_workers=0, image_size=32, resampling="sqrt", shuffle_buffer=50, seed=0)
    return HashtagDataModule(str(path), **{**args, **kw})


def test_batches_carry_images_and_normalised_targets(corpus_dir):
    dm = datamodule(corpus_dir)
    images, targets, skipped, position = next(iter(dm.train_dataloader()))
    assert position.tolist() == [0, 1, 0, 8]  # stream 0 after one group: pass 0, 8 items read
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, dm.num_classes)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert int(skipped) == 0


def test_virtual_epoch_has_the_corpus_size_in_batches(corpus_dir):
    dm = datamodule(corpus_dir)
    batches = list(dm.train_dataloader())
    assert len(batches) == dm.num_samples("train") // 8
    assert len(set(dm.train_shards)) == len(dm.train_shards) >= 2
    assert len(list(datamodule(corpus_dir, epoch_images=80).train_dataloader())) == 10


def test_val_stream_covers_every_val_sample_once(corpus_dir):
    dm = datamodule(corpus_dir)
    seen = sum(len(batch[0]) for batch in dm.val_dataloader())
    assert seen == dm.num_samples("val") > 0


def test_corrupt_samples_are_skipped_and_counted(tmp_path, corpus_dir):
    import webdataset as wds

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    first = sorted(copy.glob("train-*.tar"))[0]
    samples = list(wds.WebDataset(str(first), shardshuffle=False))
    with wds.TarWriter(str(first)) as writer:
        for i, sample in enumerate(samples):
            sample = {k: v for k, v in sample.items() if k in ("__key__", "jpg", "json")}
            if i < 3:
                sample["jpg"] = b"garbage"
            writer.write(sample)
    dm = datamodule(copy, resampling="natural")
    skipped = sum(int(batch[2]) for batch in dm.val_dataloader())
    assert skipped == 0
    pipeline_total = sum(int(b[2]) for b in dm.train_dataloader())
    assert pipeline_total >= 3  # natural resampling emits every sample at least once per pass


def test_too_few_shards_for_workers_fails_at_start(corpus_dir):
    dm = datamodule(corpus_dir, num_workers=64)
    with pytest.raises(ValueError, match="train shards cannot feed 1 ranks x 64 workers"):
        dm.train_dataloader()


def test_missing_corpus_files_fail_with_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.path=.*no sizes.json"):
        datamodule(tmp_path)


def test_sqrt_resampling_flattens_label_histogram(corpus_dir):
    vocab = json.loads((corpus_dir / "vocab.json").read_text())
    natural = torch.tensor([label["train_frequency"] for label in vocab["labels"]])

    def histogram(scheme):
        dm = datamodule(corpus_dir, resampling=scheme, image_size=16)
        counts = torch.zeros(dm.num_classes)
        for _ in range(3):
            loader = dm.train_dataloader()
            for _, targets, _, position in loader:
                counts += targets.sum(0)
                loader.consumed(position)
        return counts / counts.sum()

    spread = {
        scheme: (histogram(scheme).max() / histogram(scheme).min()).item()
        for scheme in ("natural", "uniform")
    }
    assert spread["uniform"] < spread["natural"]
    assert spread["natural"] == pytest.approx((natural.max() / natural.min()).item(), rel=0.5)


def train(loader, batches=None):
    """Iterate as Lightning's fit loop does, reporting each batch consumed; returns the images."""
    seen = []
    for images, _, _, position in loader:
        if batches is not None and len(seen) == batches:
            break
        loader.consumed(position)
        seen.append(images)
    return seen


def test_train_stream_is_reproducible_and_reshuffled_each_epoch(corpus_dir):
    first, second = datamodule(corpus_dir, seed=7), datamodule(corpus_dir, seed=7)
    loader = first.train_dataloader()
    epoch_one = torch.stack(train(loader))
    assert torch.equal(epoch_one, torch.stack(train(second.train_dataloader())))
    epoch_two = torch.stack(train(loader))
    assert epoch_one.shape == epoch_two.shape and not torch.equal(epoch_one, epoch_two)


def test_unconsumed_batches_are_served_again(corpus_dir):
    loader = datamodule(corpus_dir).train_dataloader()
    first = train(loader, batches=3)
    again = train(loader)  # the 4th batch was fetched but not consumed: the epoch goes on from it
    epoch = train(datamodule(corpus_dir).train_dataloader())
    assert torch.equal(torch.stack(first + again), torch.stack(epoch))


@pytest.mark.parametrize("consumed", [3, 6])  # 3: mid-epoch, mid-turn of the 2 workers
def test_resume_from_state_continues_the_exact_stream(corpus_dir, consumed):
    def make():
        return datamodule(corpus_dir, num_workers=2, batch_size=4).train_dataloader()

    uninterrupted = make()
    reference = train(uninterrupted) + train(uninterrupted)  # two epochs
    interrupted = make()
    head = train(interrupted, batches=consumed)
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    tail = train(resumed) + train(resumed)  # the rest of epoch one, then epoch two
    assert torch.equal(torch.stack(head + tail), torch.stack(reference))


def test_resume_with_other_worker_count_is_refused(corpus_dir):
    loader = datamodule(corpus_dir, num_workers=2).train_dataloader()
    train(loader, batches=1)
    with pytest.raises(ConfigError, match="1 ranks x 2 streams .* not 1 x 1"):
        datamodule(corpus_dir, num_workers=0).train_dataloader().load_state_dict(loader.state_dict())


def test_img2dataset_inputs_train_from_their_own_tars(tmp_path, synthetic_dir, in1k, compose_config):
    """corpus.train_images=reference: no train image is copied; the loader labels the input tar's samples."""
    import webdataset as wds

    from tests.corpus.test_build import synthetic_posts, write_img2dataset_shard
    from wsp.corpus.build import BuildOptions, CorpusError, build
    from wsp.corpus.posts import Columns
    from wsp.data.hashtags import shard_samples
    from wsp.tasks import run_task

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    jsonl = synthetic_posts(synthetic_dir)[0]
    write_img2dataset_shard(jsonl, downloaded)
    copied, referenced = tmp_path / "copied", tmp_path / "referenced"
    for output, mode in ((copied, "copy"), (referenced, "reference")):
        options = BuildOptions(shard_size=1000, val_fraction=0.1, train_images=mode)
        build([downloaded / "00000.tar"], output, in1k, Columns(), options)
    assert not list(referenced.glob("train-*.tar")) and (referenced / "train-00000.ref.json").is_file()
    for shared in ["vocab.json", *(p.name for p in copied.glob("val-*.tar"))]:
        assert (referenced / shared).read_bytes() == (copied / shared).read_bytes(), shared

    def train_samples(corpus):
        dm = datamodule(corpus)
        samples = [s for url in dm._urls(dm.train_shards) for s in shard_samples(url)]
        return {json.loads(s["json"]).get("source", s["__key__"]): (s["jpg"], json.loads(s["json"])["labels"])
                for s in samples}  # fmt: skip

    expected = train_samples(copied)
    assert train_samples(referenced) == expected
    assert len(expected) == datamodule(referenced).num_samples("train") > 0
    sample = next(iter(wds.WebDataset(str(downloaded / "00000.tar"), shardshuffle=False)))
    assert b"caption" in sample["json"]  # the input keeps its own json; labels come from the reference

    cfg = compose_config("task=pretrain", f"data.path={referenced}", "task.images=16", "logger=csv",
                         "data.num_workers=0", "data.batch_size=8", "model.image_size=32")  # fmt: skip
    assert run_task(cfg)["steps"] == 2
    with pytest.raises(CorpusError, match="corpus.train_images=reference: .* is a posts table"):
        build([jsonl], tmp_path / "refused", in1k, Columns(), BuildOptions(train_images="reference"))
