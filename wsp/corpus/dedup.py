"""Near-duplicates of evaluation images in a training corpus (the paper's Section 1 check).

Three detectors, each a row source for matches.csv (eval_image, corpus_key, method, score):
  - exact: identical bytes (SHA-256);
  - phash: perceptual hash (63 bits: the 8x8 lowest DCT frequencies of a 32x32 grey image, DC left
    out) within a Hamming distance;
  - embedding: cosine similarity of a trained backbone's pooled features above a threshold. The corpus
    streams past the (small) evaluation set and only each eval image's k nearest corpus images are kept,
    so memory does not grow with the corpus.

The data flow: DataLoader workers read the corpus shards (image tars, and `.ref.json` reference shards
through the training stream's reader), each worker its own shards, and do the per-image work: SHA-256,
decoding, perceptual hash, the exact and phash comparisons with the eval set, the centre crop for the
embedding. The main process only merges: it collects the matches, runs the backbone (on its device) over
the crops and merges the k nearest neighbours. A corpus image is known by its id, shard index << 32 |
its position in the shard, so neither the key of every candidate nor a second pass over the whole corpus
is needed: the few images whose key or pixels are wanted (embedding matches, contact sheets) are read
again from their shards alone.

Contact sheets (an eval image beside its k nearest corpus images) are for inspection by eye, as the paper
inspected 21 neighbours by hand. `corpus.exclude=<matches.csv>` rebuilds the corpus without the matches.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from wsp.corpus.shards import IMAGE_KEYS, shard_samples
from wsp.data.transforms import CentreCrop, normalise
from wsp.utils.images import IMAGE_SUFFIXES

POSITION_BITS = 32  # a corpus image's id: shard index << POSITION_BITS | its position in the shard
KNN_CHUNK = 4096  # corpus features ranked against the eval set per faiss call (benchmarks/dedup.py)


@dataclass(frozen=True)
class Match:
    eval_image: str
    corpus_key: str
    method: str
    score: float


def eval_images(folders: list[str]) -> list[Path]:
    """Every image below the evaluation folders, sorted (ImageNet val, CUB test, Places365 val, any folder)."""
    paths = []
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"task.eval: no folder {folder}")
        paths += sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"task.eval: no images below {folders}")
    return paths


def corpus_shards(corpus: Path) -> tuple[list[str], int]:
    """Every shard sizes.json lists (train and val, image tars and reference shards) and their samples."""
    sizes = json.loads((corpus / "sizes.json").read_text())
    return [str(corpus / name) for name in sorted(sizes)], sum(sizes.values())


def shard_images(url: str) -> Iterator[tuple[str, bytes | None]]:
    """(source post key, image bytes or None when the sample has none) of each sample of a corpus shard.
    A reference shard's samples come from the input tar it names, read as training reads them; their
    json carries no `source`, their tar member key being the post key."""
    for sample in shard_samples(url):
        key = json.loads(sample.get("json", b"{}")).get("source") or sample["__key__"].rpartition("/")[2]
        yield key, next((sample[k] for k in IMAGE_KEYS if k in sample), None)


def corpus_samples(corpus: Path) -> Iterator[tuple[str, bytes | None]]:
    """(source post key, image bytes) of every sample of a corpus, train and val, in id order."""
    for url in corpus_shards(corpus)[0]:
        yield from shard_images(url)


def _file_image(path: str) -> Iterator[tuple[str, bytes]]:
    yield path, Path(path).read_bytes()


def _open_rgb(data: bytes) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception:  # an undecodable image cannot be a perceptual or embedding match (it is counted)
        return None


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    matrix = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


_DCT32 = _dct_matrix(32)


def perceptual_hash(image: Image.Image) -> int:
    """pHash: the signs of the 8x8 lowest DCT frequencies (DC left out) of a 32x32 grey image vs their median."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ grey @ _DCT32.T)[:8, :8].flatten()[1:]
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: np.ndarray, b: int) -> np.ndarray:
    return np.bitwise_count(a ^ np.uint64(b)).astype(np.int64)


@dataclass(frozen=True)
class EvalPrints:
    """The evaluation set as the workers compare corpus images with it (small: ~10^4-10^5 images)."""

    names: list[str]
    by_digest: dict[str, list[int]]
    hashes: np.ndarray  # uint64 perceptual hashes
    decoded: np.ndarray  # bool: an undecodable eval image matches by bytes only
    phash_max_distance: int

    def matches(self, key: str, digest: str, phash: int | None) -> list[Match]:
        found = [Match(self.names[i], key, "exact", 1.0) for i in self.by_digest.get(digest, ())]
        if phash is not None:
            distance = hamming(self.hashes, phash)
            close = np.flatnonzero((distance <= self.phash_max_distance) & self.decoded)
            found += [Match(self.names[i], key, "phash", float(distance[i])) for i in close]
        return found


@dataclass
class ImageBatch:
    """A worker's fingerprints of a batch of images (the pixels only of the decoded ones)."""

    parts: np.ndarray  # int64: the part (corpus shard, eval image) each image comes from
    positions: np.ndarray  # int64: its position in that part
    digests: list[str]  # SHA-256 ("" where not asked for)
    hashes: np.ndarray  # uint64 perceptual hashes (0 where not asked for or undecodable)
    decoded: np.ndarray  # bool
    pixels: torch.Tensor | None  # uint8 centre crops of the decoded images, for the embedding
    matches: list[Match]  # exact and phash matches with the eval set (corpus scans)
    undecodable: int  # images missing, or undecodable where decoded (exact alone decodes nothing)

    @property
    def ids(self) -> np.ndarray:
        return self.parts << POSITION_BITS | self.positions


class ImageScan(IterableDataset):
    """Fingerprints of the images of `parts` (corpus shards, or eval image files) in batches: DataLoader
    worker w reads parts w, w + workers, ...; `read(part)` yields (name, bytes) pairs. Corpus images are
    compared with `against` (the eval set) in the worker."""

    def __init__(self, parts: list[str], read: Callable[[str], Iterable[tuple[str, bytes | None]]],
                 methods: list[str], crop: CentreCrop | None, batch_size: int,
                 against: EvalPrints | None = None):  # fmt: skip
        self.parts, self.read, self.methods, self.crop = parts, read, methods, crop
        self.batch_size, self.against = batch_size, against
        self.decodes = "phash" in methods or crop is not None

    def __iter__(self) -> Iterator[ImageBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batch = []
        for part in range(worker, len(self.parts), workers):
            for position, (name, data) in enumerate(self.read(self.parts[part])):
                batch.append((part, position, name, data))
                if len(batch) == self.batch_size:
                    yield self._fingerprints(batch)
                    batch = []
        if batch:
            yield self._fingerprints(batch)

    def _fingerprints(self, items: list[tuple[int, int, str, bytes | None]]) -> ImageBatch:
        digests, hashes, decoded, crops, matches, undecodable = [], [], [], [], [], 0
        for _, _, name, data in items:
            digest = hashlib.sha256(data).hexdigest() if data is not None and "exact" in self.methods else ""
            image = _open_rgb(data) if data is not None and self.decodes else None
            phash = perceptual_hash(image) if image is not None and "phash" in self.methods else None
            if image is not None and self.crop is not None:
                crops.append(self.crop(image))
            if self.against is not None:
                matches += self.against.matches(name, digest, phash)
            undecodable += data is None or (self.decodes and image is None)
            digests.append(digest)
            hashes.append(phash or 0)
            decoded.append(image is not None)
        return ImageBatch(
            parts=np.array([item[0] for item in items], dtype=np.int64),
            positions=np.array([item[1] for item in items], dtype=np.int64),
            digests=digests, hashes=np.array(hashes, dtype=np.uint64), decoded=np.array(decoded, dtype=bool),
            pixels=torch.stack(crops) if crops else None, matches=matches, undecodable=undecodable,
        )  # fmt: skip


def _batches(scan: ImageScan, num_workers: int) -> DataLoader:
    return DataLoader(scan, batch_size=None, num_workers=num_workers)


class Embedder:
    """A backbone's pooled features on `device`, L2-normalised float32 (cosine = inner product), of images
    centre-cropped by `crop` (in the loader workers) as the model is evaluated."""

    def __init__(self, backbone: torch.nn.Module, crop: CentreCrop, device: torch.device):
        self.backbone, self.crop, self.device = backbone.eval().to(device), crop, device
        self.dim = backbone.num_features

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> np.ndarray:
        features = self.backbone(normalise(pixels.to(self.device))).float()
        return torch.nn.functional.normalize(features, dim=1).cpu().numpy()


def _inner_product_knn() -> Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """faiss's exact k-NN by inner product (no index kept), on a GPU when faiss was built with one."""
    if faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        return lambda xq, xb, k: faiss.knn_gpu(resources, xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)
    return lambda xq, xb, k: faiss.knn(xq, xb, k, metric=faiss.METRIC_INNER_PRODUCT)


class NearestNeighbours:
    """The k most similar corpus images (cosine) of each eval image, over a corpus streamed in chunks.

    Why faiss.knn over each chunk, not an index of the eval set: faiss returns the k nearest *database*
    vectors of each query, and each eval image needs its k nearest corpus images, so the eval images are
    the queries and a chunk of corpus features the database. faiss.knn ranks the chunk exactly in tiles
    (BLAS GEMM, then a heap per query), never holding the eval x chunk similarity matrix (2.5 GB for
    150k eval images), and faiss.ResultHeap merges the chunk's top-k into the running top-k in place.
    The chunk, not the library, is the speed-up (benchmarks/dedup.py, 10k queries x 2048-d: 3.9k corpus
    vectors/s per chunk of 4,096 vs 1.5-1.9k per loader batch of 64; torch matmul + topk 3.6-3.8k and
    2.2-2.4k). Memory: the running top-k (eval images x k scores and ids) and one chunk of features."""

    def __init__(self, queries: np.ndarray, k: int, chunk: int = KNN_CHUNK):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k, self.chunk = k, chunk
        self.top = faiss.ResultHeap(len(queries), k, keep_max=True)
        self.features: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.knn = _inner_product_knn()

    def add(self, features: np.ndarray, ids: np.ndarray) -> None:
        """Corpus images' normalised features and ids (any int64 >= 0)."""
        self.features.append(features)
        self.ids.append(ids)
        if sum(map(len, self.ids)) >= self.chunk:
            self._search()

    def _search(self) -> None:
        if not self.ids:
            return
        chunk, ids = np.concatenate(self.features), np.concatenate(self.ids)
        scores, rows = self.knn(self.queries, chunk, min(self.k, len(ids)))
        self.top.add_result(scores, ids[rows])
        self.features, self.ids = [], []

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each eval images x k, most similar first; id -1 pads rows of a corpus smaller
        than k. Call once, after the last `add`."""
        self._search()
        self.top.finalize()
        return self.top.D, self.top.I


@dataclass
class Duplicates:
    matches: list[Match]
    eval_decoded: np.ndarray  # bool per eval image (all False when no method decodes)
    eval_images_undecodable: int
    corpus_images: int  # corpus samples scanned
    corpus_images_undecodable: int  # of those, without an image or (phash, embedding) undecodable
    neighbours: tuple[np.ndarray, np.ndarray] | None  # embedding: per eval image, k (scores, corpus ids)


def _eval_fingerprints(paths: list[Path], methods: list[str], embedder: Embedder | None, phash_max_distance: int,
                       batch_size: int, num_workers: int) -> tuple[EvalPrints, np.ndarray | None, int]:  # fmt: skip
    """The eval set's fingerprints (computed in workers, as the corpus's), embeddings (zero rows for
    undecodable images) and undecodable count."""
    n = len(paths)
    digests, hashes, decoded = [""] * n, np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
    features = np.zeros((n, embedder.dim), dtype=np.float32) if embedder is not None else None
    crop = embedder.crop if embedder is not None else None
    scan = ImageScan([str(p) for p in paths], _file_image, methods, crop, batch_size)
    undecodable = 0
    with tqdm(total=n, desc="dedup: eval images", unit="img") as bar:
        for batch in _batches(scan, num_workers):
            for i, digest in zip(batch.parts.tolist(), batch.digests, strict=True):
                digests[i] = digest
            hashes[batch.parts], decoded[batch.parts] = batch.hashes, batch.decoded
            if features is not None and batch.pixels is not None:
                features[batch.parts[batch.decoded]] = embedder(batch.pixels)
            undecodable += batch.undecodable
            bar.update(len(batch.parts))
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        by_digest[digest].append(i)
    by_digest.pop("", None)
    prints = EvalPrints([str(p) for p in paths], dict(by_digest), hashes, decoded, phash_max_distance)
    return prints, features, undecodable


def find_duplicates(eval_paths: list[Path], shards: list[str], methods: list[str], *, phash_max_distance: int,
                    embedder: Embedder | None, threshold: float, k: int, batch_size: int,
                    num_workers: int) -> Duplicates:  # fmt: skip
    """The eval images' fingerprints, then one pass over the corpus shards: its matches by every method."""
    prints, queries, eval_undecodable = _eval_fingerprints(eval_paths, methods, embedder, phash_max_distance,
                                                           batch_size, num_workers)  # fmt: skip
    nearest = NearestNeighbours(queries, k) if embedder is not None else None
    matches: list[Match] = []
    scanned = undecodable = 0
    crop = embedder.crop if embedder is not None else None
    scan = ImageScan(shards, shard_images, methods, crop, batch_size, against=prints)
    with tqdm(desc="dedup: corpus", unit="img") as bar:
        for batch in _batches(scan, num_workers):
            matches += batch.matches
            scanned += len(batch.parts)
            undecodable += batch.undecodable
            if nearest is not None and batch.pixels is not None:
                nearest.add(embedder(batch.pixels), batch.ids[batch.decoded])
            bar.update(len(batch.parts))
    neighbours = nearest.finish() if nearest is not None else None
    if neighbours is not None:
        matches += embedding_matches(prints, neighbours, shards, threshold)
    return Duplicates(matches, prints.decoded, eval_undecodable, scanned, undecodable, neighbours)


def embedding_matches(prints: EvalPrints, neighbours: tuple[np.ndarray, np.ndarray], shards: list[str],
                      threshold: float) -> list[Match]:  # fmt: skip
    """Neighbours at or above the threshold of decodable eval images, their keys read from their shards."""
    scores, ids = neighbours
    close = (scores >= threshold) & (ids >= 0) & prints.decoded[:, None]
    keys = {i: key for i, key, _ in read_by_id(shards, set(ids[close].tolist()))}
    return [Match(prints.names[q], keys[int(ids[q, j])], "embedding", float(scores[q, j]))
            for q, j in zip(*np.nonzero(close), strict=True)]  # fmt: skip


def read_by_id(shards: list[str], ids: set[int]) -> Iterator[tuple[int, str, bytes | None]]:
    """(id, post key, image bytes) of the given corpus images, reading only the shards that hold them."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for i in ids:
        wanted[i >> POSITION_BITS].add(i & ((1 << POSITION_BITS) - 1))
    for shard, positions in sorted(wanted.items()):
        last = max(positions)
        for position, (key, data) in enumerate(shard_images(shards[shard])):
            if position in positions:
                yield shard << POSITION_BITS | position, key, data
            if position == last:
                break


def write_matches(matches: list[Match], path: Path) -> None:
    with path.open("w", newline="") as table:
        writer = csv.writer(table)
        writer.writerow(["eval_image", "corpus_key", "method", "score"])
        for m in sorted(matches, key=lambda m: (m.eval_image, m.method, m.corpus_key)):
            writer.writerow([m.eval_image, m.corpus_key, m.method, f"{m.score:.4f}"])


def contact_sheets(eval_paths: list[Path], neighbours: tuple[np.ndarray, np.ndarray], shards: list[str],
                   selected: set[int], out: Path, thumb: int = 96) -> int:  # fmt: skip
    """One PNG per selected eval image: it (left, red frame) and its k nearest corpus images by score."""
    _, ids = neighbours
    thumbs = {}
    for i, _, data in read_by_id(shards, {int(i) for q in selected for i in ids[q] if i >= 0}):
        if data is not None and (image := _open_rgb(data)) is not None:
            image.thumbnail((thumb, thumb))  # keep thumbnails, not full images
            thumbs[i] = image
    out.mkdir(parents=True, exist_ok=True)
    for q in sorted(selected):
        row = [int(i) for i in ids[q] if i >= 0]
        sheet = Image.new("RGB", ((len(row) + 1) * (thumb + 4), thumb + 4), "white")
        query = Image.open(eval_paths[q]).convert("RGB").resize((thumb, thumb))
        sheet.paste(Image.new("RGB", (thumb + 4, thumb + 4), "red"), (0, 0))
        sheet.paste(query, (2, 2))
        for j, i in enumerate(row, start=1):
            if i in thumbs:
                sheet.paste(thumbs[i].resize((thumb, thumb)), (j * (thumb + 4) + 2, 2))
        sheet.save(out / f"{q:06d}_{eval_paths[q].stem}.png")
    return len(selected)
