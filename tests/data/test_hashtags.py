import json
import shutil

import pytest
import torch

from wsp.config import ConfigError
from wsp.data.hashtags import HashtagDataModule


def datamodule(path, **kw):
    args = dict(batch_size=8, num_workers=0, image_size=32, resampling="sqrt", seed=0)
    return HashtagDataModule(str(path), **{**args, **kw})


def test_batches_carry_images_and_normalised_targets(corpus_dir):
    dm = datamodule(corpus_dir)
    images, targets, skipped, position = next(iter(dm.train_dataloader()))
    assert position.tolist() == [0, 0, 0, 0, 8, 0]  # slot 0's stream 0 goes on at pass 0, block 0, item 8
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
    with pytest.raises(
        ValueError, match=r"data.streams=64 \(unset: 1 ranks x 64 workers\): more than .* 8 train shards"
    ):
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


def test_resume_with_other_settings_or_corpus_is_refused(corpus_dir, tmp_path):
    loader = datamodule(corpus_dir, num_workers=2).train_dataloader()
    train(loader, batches=1)
    state = loader.state_dict()
    with pytest.raises(ConfigError, match=r"another data.resampling \(sqrt, not uniform\)"):
        datamodule(corpus_dir, resampling="uniform").train_dataloader().load_state_dict(state)
    with pytest.raises(ConfigError, match="data.streams=3: the checkpoint's run has 2 streams"):
        datamodule(corpus_dir, streams=3).train_dataloader().load_state_dict(state)
    other = tmp_path / "other"
    shutil.copytree(corpus_dir, other)
    sizes = json.loads((other / "sizes.json").read_text())
    sizes.pop(sorted(s for s in sizes if s.startswith("train-"))[-1])
    (other / "sizes.json").write_text(json.dumps(sizes))
    with pytest.raises(
        ConfigError, match="ckpt_path: the checkpoint's data stream was made with another corpus"
    ):
        datamodule(other).train_dataloader().load_state_dict(state)


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


def test_copies_of_one_image_are_spread_over_their_block(corpus_dir):
    """Uniform resampling repeats tail images many times; their copies lie about len/copies apart."""
    from collections import defaultdict

    loader = datamodule(corpus_dir, resampling="uniform").train_dataloader()
    streams = loader.streams
    order = streams.block(0, 0, 0, streams.plan(0, 0)[0])
    places = defaultdict(list)
    for index, sample in enumerate(order):
        places[sample["__key__"]].append(index)
    repeated = {key: p for key, p in places.items() if len(p) >= 2}
    assert repeated, "uniform resampling repeats the rarest labels' images"
    for where in repeated.values():
        gaps = [b - a for a, b in zip(where, where[1:], strict=False)]
        assert min(gaps) >= len(order) / len(where) / 3, (len(order), where)


def test_a_resume_reads_one_block_per_stream_whatever_the_offset(corpus_dir, monkeypatch):
    import wsp.data.hashtags as hashtags

    opened = []
    real = hashtags.shard_samples
    monkeypatch.setattr(hashtags, "shard_samples", lambda url: (opened.append(url), real(url))[1])
    loader = datamodule(corpus_dir, num_workers=0, batch_size=4, block_shards=1).train_dataloader()
    late = {"positions": {0: [3, len(loader.streams.plan(0, 3)) - 1, 5]}, "next_stream": [[0]],
            "batches_consumed": 0, "streams": 1, "layout": [1, 1], "identity": loader.identity}  # fmt: skip
    loader.load_state_dict(late)
    next(iter(loader))
    assert len(opened) == 1  # the block it stopped in, not the 3 passes and blocks before it


@pytest.mark.parametrize("workers", [0, 2])  # one slot playing both streams; a worker process per stream
def test_a_resume_on_another_layout_trains_on_the_same_items_over_a_pass(corpus_dir, workers):
    """2 ranks x 1 worker, interrupted; resumed on 1 rank x 1 or 2 workers: over a pass the multiset of
    (image crop) items equals an uninterrupted run's. Crops are seeded by the item's place in its stream,
    so equal crops mean equal items."""
    from collections import Counter

    from wsp.data.hashtags import merged_state

    def make(rank, ranks, workers):  # a rank of a `ranks`-rank job, built in this process
        return datamodule(corpus_dir, num_workers=workers, batch_size=1, image_size=16).stream_loader(
            rank, ranks
        )

    def first_pass(loaders, stop_after=None):
        """Items of pass 0, consumed step by step (one batch per rank), until every stream is past it."""
        seen, where, iterators, steps = Counter(), {}, [iter(loader) for loader in loaders], 0
        while not all(where.get(v, (0,))[0] >= 1 for v in range(loaders[0].num_streams)):
            if steps == stop_after:
                return seen, where
            for loader, batches in zip(loaders, iterators, strict=True):
                try:
                    images, _, _, position = next(batches)
                except StopIteration:  # a virtual epoch ended
                    batches = iterators[loaders.index(loader)] = iter(loader)
                    images, _, _, position = next(batches)
                stream = position[1].item()
                if where.get(stream, (0,))[0] == 0:  # the item's place: where its stream was before it
                    seen[images.numpy().tobytes()] += 1
                loader.consumed(position)
                where[stream] = tuple(position[2:5].tolist())
            steps += 1
        return seen, where

    uninterrupted, _ = first_pass([make(0, 2, 0), make(1, 2, 0)])
    ranks = [make(0, 2, 0), make(1, 2, 0)]
    head, _ = first_pass(ranks, stop_after=7)
    state = merged_state([r.local_state() for r in ranks], 2, ranks[0].layout, ranks[0].identity)
    resumed = make(0, 1, workers)
    resumed.load_state_dict(state)
    tail, _ = first_pass([resumed])
    assert head + tail == uninterrupted and sum(uninterrupted.values()) > 50


def test_an_image_member_named_jpeg_decodes_as_jpg(corpus_dir):
    """img2dataset writes `.jpeg` members too; every reader of a sample's image takes them."""
    import webdataset as wds

    from wsp.data.hashtags import decode
    from wsp.data.transforms import CentreCrop

    sample = next(iter(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False)))
    renamed = {"jpeg" if key == "jpg" else key: value for key, value in sample.items()}
    image, target = decode(renamed, CentreCrop(32), None, 20)
    assert image.shape == (3, 32, 32) and target.sum() == pytest.approx(1.0)
