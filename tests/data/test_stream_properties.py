"""The training stream's guarantees, checked on the items it serves (hypothesis over the real stream code).

A job is simulated in this process: R rank loaders (the real StreamLoader, state, epochs and ledger
bookkeeping), each with W workers played in turn as the DataLoader plays them (the real RankBatches
code per worker). Training runs step by step, every rank consuming one batch per step; checkpoints
save the state; a kill drops what came after the last checkpoint (batches in flight included), and the
job resumes from that checkpoint on another layout. Whatever the layouts, kills and resumes, the job
must have trained on exactly the item sequence, in order, each item once: per pass, the planned
multiset of (sample, copy).
"""

from __future__ import annotations

import io
from collections import Counter
from itertools import count

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from wsp.corpus.shards import write_labelled_corpus
from wsp.data.hashtags import Cursor, HashtagDataModule, StreamLoader


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 120, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


class InProcessWorkers(StreamLoader):
    """A StreamLoader whose W workers run in this process, taken in turn as the DataLoader takes them."""

    def _workers(self, dataset):
        workers = [dataset.batches(w, max(1, self.num_workers)) for w in range(max(1, self.num_workers))]
        return (next(workers[k % len(workers)]) for k in count())


def ranks_of(dm: HashtagDataModule, ranks: int, workers: int) -> list[StreamLoader]:
    loaders = []
    for rank in range(ranks):
        loader = dm.stream_loader(rank, ranks)
        loader.__class__ = InProcessWorkers
        loader.num_workers = workers
        loaders.append(loader)
    return loaders


corpora = st.fixed_dictionaries({
    "shard_sizes": st.lists(st.integers(1, 25), min_size=1, max_size=10),
    "labels": st.integers(1, 6),
    "block_runs": st.integers(1, 5),
    "run_samples": st.integers(1, 9),
    "resampling": st.sampled_from(["natural", "sqrt", "uniform"]),
    "epoch_images": st.integers(5, 60),
})  # fmt: skip
segments = st.lists(
    st.tuples(
        st.integers(1, 8),
        st.integers(0, 4),
        st.lists(st.integers(1, 6), min_size=1, max_size=3),
        st.integers(0, 5),
        st.booleans(),
    ),  # fmt: skip
    min_size=4,
    max_size=5,
)  # each: ranks, workers, steps between saves, steps after the last save before the kill, a batch in flight


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])  # fmt: skip
@given(corpus=corpora, layouts=segments, seed=st.integers(0, 3), data=st.data())
def test_any_layouts_kills_and_resumes_train_on_the_planned_items_once(
    tmp_path_factory, corpus, layouts, seed, data
):
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(seed)
    samples = ((f"k{i:04d}", JPEG, sorted({int(rng.integers(corpus["labels"])) for _ in range(rng.integers(1, 3))}))
               for i in range(sum(corpus["shard_sizes"])))  # fmt: skip
    write_labelled_corpus(root, samples, corpus["shard_sizes"], corpus["labels"])
    dm = HashtagDataModule(str(root), batch_size=data.draw(st.integers(1, 4)), num_workers=0, image_size=8,
                           resampling=corpus["resampling"], block_runs=corpus["block_runs"],
                           run_samples=corpus["run_samples"], seed=seed, epoch_images=corpus["epoch_images"])  # fmt: skip
    trained, state = [], None  # (step, rank, pass, block, item, sample, copy) of each item trained
    for ranks, workers, saves, after_last_save, in_flight in layouts:
        loaders = ranks_of(dm, ranks, workers)
        if state is not None:
            for loader in loaders:
                loader.load_state_dict(state)
        step = state["steps"] if state else 0
        trained = [row for row in trained if row[0] < step]  # a resume drops what its checkpoint lacks
        epochs = [iter(loader) for loader in loaders]
        for segment, steps in enumerate([*saves, after_last_save]):
            for _ in range(steps):
                for rank, loader in enumerate(loaders):
                    batch = next_batch(loaders, epochs, rank)
                    loader.consumed(batch[3], batch[4], step)
                    trained += [(step, rank, *row[:5]) for row in batch[4].tolist()]
                step += 1
            if segment < len(saves):  # a checkpoint; the kill comes after the last segment
                saved = [loader.state_dict() for loader in loaders]
                assert all(s == saved[0] for s in saved), "every rank holds the one position"
                state = saved[0]
        if in_flight:  # the kill finds a batch fetched but not consumed
            next_batch(loaders, epochs, 0)
    trained = [row for row in trained if row[0] < (state["steps"] if state else 0)]

    in_order = [row[2:] for row in sorted(trained, key=lambda row: (row[0], row[1]))]
    cursor = Cursor(dm.item_sequence(), (0, 0, 0))
    assert in_order == cursor.take(len(in_order)), "the job trains on the item sequence, in order, once"
    sequence = dm.item_sequence()
    for pass_ in {row[0] for row in in_order[:-1]} - {in_order[-1][0] if in_order else -1}:
        planned = Counter(
            (int(s), int(c))
            for b in range(sequence.blocks(pass_))
            for s, c in zip(*sequence.block(pass_, b), strict=True)
        )
        assert Counter((row[3], row[4]) for row in in_order if row[0] == pass_) == planned


def next_batch(loaders, epochs, rank):
    try:
        return next(epochs[rank])
    except StopIteration:  # a virtual epoch ended
        epochs[rank] = iter(loaders[rank])
        return next(epochs[rank])


JPEG = jpeg()
