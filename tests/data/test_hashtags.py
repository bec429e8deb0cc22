import json
import shutil
from pathlib import Path

import pytest
import torch

from wsp.config import ConfigError
from wsp.data.hashtags import HashtagDataModule


def datamodule(path, **kw):
    args = dict(batch_size=8, num_workers=0, image_size=32, resampling="sqrt", seed=0)
    return HashtagDataModule(str(path), **{**args, **kw})


def test_batches_carry_images_and_normalised_targets(corpus_dir):
    dm = datamodule(corpus_dir)
    images, targets, skipped, after, trace = next(iter(dm.train_dataloader()))
    assert after.tolist() == [0, 0, 8, 8]  # the sequence goes on at pass 0, block 0, item 8; 8 items consumed
    assert trace[:, :3].tolist() == [[0, 0, i] for i in range(8)] and trace[:, 5].tolist() == [1] * 8
    assert images.shape == (8, 3, 32, 32) and targets.shape == (8, dm.num_classes)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert int(skipped) == 0


def test_virtual_epoch_has_the_corpus_size_in_batches(corpus_dir):
    dm = datamodule(corpus_dir)
    batches = list(dm.train_dataloader())
    assert len(batches) == -(-dm.num_samples("train") // 8)  # the steps that take epoch_images items
    assert len(set(dm.train_shards)) == len(dm.train_shards) >= 2
    assert len(list(datamodule(corpus_dir, epoch_images=80).train_dataloader())) == 10


def test_val_stream_covers_every_val_sample_once(corpus_dir):
    dm = datamodule(corpus_dir)
    seen = sum(len(batch[0]) for batch in dm.val_dataloader())
    assert seen == dm.num_samples("val") > 0


def test_corrupt_samples_are_skipped_and_counted(tmp_path, corpus_dir):
    """Bytes rotted in place after the build: every item whose image does not decode is skipped and
    counted, in the batch's count and in its trace."""
    import numpy as np

    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    index = datamodule(copy).index
    first = Path(index.file(0))
    data = bytearray(first.read_bytes())
    for sample in range(3):  # the first 3 samples of the first shard
        offset, size = int(index.offsets[sample]), int(index.sizes[sample])
        data[offset : offset + size] = b"\0" * size
    first.write_bytes(bytes(data))
    dm = datamodule(copy, resampling="natural")
    assert sum(int(batch[2]) for batch in dm.val_dataloader()) == 0
    batches = list(dm.train_dataloader())
    undecoded = np.concatenate([b[4][b[4][:, 5] == 0, 3].numpy() for b in batches])
    assert (
        sum(int(b[2]) for b in batches) == len(undecoded) >= 3
    )  # natural: every sample once or more per pass
    assert set(undecoded.tolist()) == {0, 1, 2}


def test_bad_block_settings_fail_at_start(corpus_dir):
    with pytest.raises(ValueError, match=r"data.run_samples=0: must be a whole number >= 1"):
        datamodule(corpus_dir, run_samples=0)


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
            for step, (_, targets, _, after, trace) in enumerate(loader):
                counts += targets.sum(0)
                loader.consumed(after, trace, step)
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
    for images, _, _, after, trace in loader:
        if batches is not None and len(seen) == batches:
            break
        loader.consumed(after, trace, loader.steps)
        seen.append(images)
    return seen


def test_train_stream_is_reproducible_and_reshuffled_each_epoch(corpus_dir):
    first, second = datamodule(corpus_dir, seed=7), datamodule(corpus_dir, seed=7)
    loader = first.train_dataloader()
    epoch_one = torch.stack(train(loader))
    assert torch.equal(epoch_one, torch.stack(train(second.train_dataloader())))
    epoch_two = torch.stack(train(loader))  # epochs end at multiples of epoch_images: 26 or 25 batches
    assert len(epoch_two) >= 25 and not torch.equal(epoch_one[:25], epoch_two[:25])


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
    from tests.data.test_stream_properties import JPEG
    from wsp.corpus.shards import write_labelled_corpus

    loader = datamodule(corpus_dir, num_workers=2).train_dataloader()
    train(loader, batches=1)
    state = loader.state_dict()
    with pytest.raises(ConfigError, match=r"another data.resampling \(sqrt, not uniform\)"):
        datamodule(corpus_dir, resampling="uniform").train_dataloader().load_state_dict(state)
    with pytest.raises(ConfigError, match=r"another data.block_runs \(1024, not 3\)"):
        datamodule(corpus_dir, block_runs=3).train_dataloader().load_state_dict(state)
    other = tmp_path / "other"
    write_labelled_corpus(other, ((f"k{i}", JPEG, [i % 3]) for i in range(12)), [6, 6], 3)
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
    from wsp.corpus.shards import shard_samples
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

    samples, copies = datamodule(corpus_dir, resampling="uniform").item_sequence().block(0, 0)
    places = defaultdict(list)
    for index, sample in enumerate(samples.tolist()):
        places[sample].append(index)
    repeated = {key: p for key, p in places.items() if len(p) >= 2}
    assert repeated, "uniform resampling repeats the rarest labels' images"
    for where in repeated.values():
        gaps = [b - a for a, b in zip(where, where[1:], strict=False)]
        assert min(gaps) >= len(samples) / len(where) / 3, (len(samples), where)
        assert sorted(copies[where].tolist()) == list(range(len(where)))  # copy numbers 0..c-1, each once


def test_a_resume_reads_one_block_whatever_the_offset(corpus_dir, monkeypatch):
    from wsp.data.hashtags import ItemSequence

    blocks = []
    real = ItemSequence.block
    monkeypatch.setattr(ItemSequence, "block", lambda self, *key: (blocks.append(key), real(self, *key))[1])
    loader = datamodule(corpus_dir, batch_size=4, block_runs=2, run_samples=8).train_dataloader()
    last = loader.sequence.blocks(3) - 1
    state = {**loader.state_dict(), "position": [3, last, 2], "items_consumed": 10_000, "steps": 2_500}
    loader.load_state_dict(state)
    next(iter(loader))
    assert blocks == [(3, last)]  # the block it stopped in, not the 3 passes and blocks before it


def test_an_image_member_named_jpeg_decodes_as_jpg(corpus_dir):
    """img2dataset writes `.jpeg` members too; every reader of a sample's image takes them."""
    import webdataset as wds

    from wsp.data.hashtags import decode
    from wsp.data.transforms import CentreCrop

    sample = next(iter(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False)))
    renamed = {"jpeg" if key == "jpg" else key: value for key, value in sample.items()}
    image, target = decode(renamed, CentreCrop(32), None, 20)
    assert image.shape == (3, 32, 32) and target.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("grouping", ["one_sorted_file", "one_file_per_label"])
def test_batches_are_as_diverse_as_iid_sampling_whatever_the_input_order(tmp_path, in1k, grouping):
    """Posts grouped by label (one table sorted by hashtag, or one table per hashtag, as crawls come)
    built by the real builder into ~3 dozen shards: a batch's mean count of distinct labels is at least
    90% of what i.i.d. draws from the same resampled distribution give."""
    import numpy as np

    from tests.conftest import tiny_jpeg
    from wsp.corpus.build import BuildOptions, build
    from wsp.corpus.posts import Columns

    labels, per_label, batch = 30, 40, 24
    (tmp_path / "image.jpg").write_bytes(tiny_jpeg())
    posts = [{"key": f"{label.name}_{i}", "image": "../image.jpg", "hashtags": [label.name]}
             for label in in1k.labels[:labels] for i in range(per_label)]  # fmt: skip
    tables = tmp_path / "posts"
    tables.mkdir()
    files = (
        [posts]
        if grouping == "one_sorted_file"
        else [posts[i : i + per_label] for i in range(0, len(posts), per_label)]
    )
    for number, rows in enumerate(files):
        (tables / f"{number:03d}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = tmp_path / "corpus"
    build(
        sorted(tables.glob("*.jsonl")),
        corpus,
        in1k,
        Columns(),
        BuildOptions(shard_size=per_label, val_fraction=0),
    )
    dm = datamodule(corpus, batch_size=batch, image_size=8)
    assert len(dm.train_shards) >= 30
    distinct = [len(set(targets.nonzero()[:, 1].tolist())) for _, targets, *_ in dm.train_dataloader()]
    mass = np.bincount(np.concatenate([dm.index.labels]), minlength=dm.num_classes) * dm.weights.per_label
    mass = mass / mass.sum()
    iid = float((1 - (1 - mass) ** batch).sum())  # expected distinct labels among `batch` i.i.d. draws
    assert np.mean(distinct[:-1]) >= 0.9 * iid, (np.mean(distinct), iid)


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])  # chunks shorter than a row, a few rows, the file
def test_a_ledger_file_is_cut_after_the_last_complete_row_before_the_checkpoint(tmp_path, chunk):
    from wsp.data.hashtags import Ledger, _truncate_after

    path = tmp_path / "rank0-step000000000000.csv"
    rows = [f"0,{step},0,0,{step},train-000000.tar,k{step},0,1\n" for step in range(12)]

    def cut(text: str, steps: int) -> tuple[int, str]:
        path.write_text(text)
        return _truncate_after(path, steps, chunk), path.read_text()

    header = Ledger.HEADER
    assert cut(header + "".join(rows), 6) == (5, header + "".join(rows[:6]))
    assert cut(header + "".join(rows), 99) == (11, header + "".join(rows))  # nothing past: kept whole
    assert cut(header + "".join(rows[:9]) + "0,1", 99) == (
        8,
        header + "".join(rows[:9]),
    )  # a row cut by a kill
    assert cut(header + "".join(rows), 0) == (-1, header)
    assert cut(header, 3) == (-1, header)
    assert cut("", 3) == (-1, "")
    assert cut(header[:10], 3) == (-1, "")  # killed while writing its header


def test_post_keys_in_any_script_reach_the_ledger_as_written(tmp_path, in1k):
    """Keys are UTF-8 in the index; the ledger names each item trained by its shard and key."""
    import pandas as pd

    from tests.conftest import tiny_jpeg
    from wsp.corpus.build import BuildOptions, build
    from wsp.corpus.posts import Columns
    from wsp.data.hashtags import StreamLoader

    (tmp_path / "image.jpg").write_bytes(tiny_jpeg())
    keys = ["café", "東京_1", "plain"]
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(json.dumps({"key": k, "image": "image.jpg", "hashtags": ["tench"]}) + "\n" for k in keys)
    )
    build([posts], tmp_path / "corpus", in1k, Columns(), BuildOptions(val_fraction=0))
    dm = datamodule(tmp_path / "corpus", batch_size=3, image_size=8, resampling="natural", ledger=True,
                    ledger_dir=str(tmp_path / "ledger"))  # fmt: skip
    loader: StreamLoader = dm.train_dataloader()
    for step, (*_, after, trace) in enumerate(loader):
        loader.consumed(after, trace, step)
    loader.ledger.close()
    rows = pd.read_csv(next((tmp_path / "ledger").glob("*.csv")))
    assert sorted(rows["key"]) == sorted(keys) and set(rows["shard"]) == set(dm.train_shards)


def test_a_ledger_that_does_not_reach_its_checkpoint_is_refused_and_a_fresh_start_clears_it(
    corpus_dir, tmp_path
):
    ledger = tmp_path / "ledger"

    def loader():
        return datamodule(corpus_dir, batch_size=4, ledger=True, ledger_dir=str(ledger)).train_dataloader()

    first = loader()
    train(first, batches=3)
    state = first.state_dict()
    assert state["steps"] == 3 and state["ledger"]
    (ledger / "rank7-step000000000000.csv").write_text("stale")  # an earlier attempt on 8 ranks
    fresh = loader()
    train(fresh, batches=1)  # no checkpoint: a fresh start
    assert sorted(p.name for p in ledger.iterdir()) == ["rank0-step000000000000.csv"]
    with pytest.raises(ConfigError, match=r"data.ledger: .* ends at step 0, but the checkpoint is at step 3"):
        loader().load_state_dict(state)
