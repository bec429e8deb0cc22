"""The linear probe at ImageNet-1k size, out of core: time and peak memory of `select_and_fit` on cached
fp16 feature shards, and its accuracy against scikit-learn's on a subsample at the same regulariser.

    .venv/bin/python benchmarks/probe.py                                   # 1,281,167 x 2048, 1,000 classes
    .venv/bin/python benchmarks/probe.py --images 100000 --classes 100     # a quick look

The features are synthetic and class-structured (a Gaussian cluster per class, rectified like pooled
ResNeXt features), written in wsp's feature-cache format (shards of `--shard-images`). The probe runs
as `task=probe` runs it: the l2 sweep on a held-out fifth, then the refit on all rows; peak RSS is the
process's, generation included. The subsample comparison fits both on the same `--subsample` rows at
the chosen l2 and scores both on the same val split.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch


class Unnamed(Sequence):
    """The (path, label) list `close_split` names an unreadable image from; synthetic features have none."""

    def __init__(self, images: int):
        self.images = images

    def __len__(self) -> int:
        return self.images

    def __getitem__(self, i):
        return f"synthetic image {i}", 0


def write_features(folder: Path, split: str, images: int, centres: torch.Tensor, noise: float,
                   shard_images: int, seed: int) -> None:  # fmt: skip
    from wsp.models.features import close_split, shard_name, write_shard

    generator = torch.Generator().manual_seed(seed)
    for j, start in enumerate(range(0, images, shard_images)):
        n = min(shard_images, images - start)
        labels = torch.randint(len(centres), (n,), generator=generator)
        x = (centres[labels] + noise * torch.randn(n, centres.shape[1], generator=generator)).relu_()
        write_shard(folder / shard_name(split, j), {"res5": x}, labels, torch.arange(start, start + n))
    close_split(folder, split, Unnamed(images), "synthetic", shard_images, max_unreadable=0.0)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb(field: str = "VmRSS") -> float:
    """The process's resident memory now (VmRSS) or its peak since the last `reset_peak` (VmHWM)."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    return kib / 2**20


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1_281_167)
    parser.add_argument("--val-images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--separation", type=float, default=0.08, help="class centres' std (noise std: 1)")
    parser.add_argument("--shard-images", type=int, default=10_000)
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-4, 1e-3])
    parser.add_argument("--max-iter", type=int, default=10, help="L-BFGS iterations per fit")
    parser.add_argument("--matmul-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="the fits' gradient tolerance (task.tolerance)"
    )
    parser.add_argument("--subsample", type=int, default=50_000,
                        help="rows for the scikit-learn comparison (0: skip it)")  # fmt: skip
    parser.add_argument("--folder", help="keep the features here (reused when present) instead of a temp dir")
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from wsp.models.features import FeatureSet
    from wsp.models.probe import (
        InMemoryFeatures,
        StageFeatures,
        accuracy,
        fit_logistic_regression,
        select_and_fit,
    )

    folder = Path(args.folder or tempfile.mkdtemp(prefix="wsp-probe-"))
    dtype = getattr(torch, args.matmul_dtype)
    try:
        started = time.perf_counter()
        if not (folder / "val.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            centres = args.separation * torch.randn(
                args.classes, args.dims, generator=torch.Generator().manual_seed(0)
            )
            write_features(folder, "train", args.images, centres, 1.0, args.shard_images, seed=1)
            write_features(folder, "val", args.val_images, centres, 1.0, args.shard_images, seed=2)
        rss_closed = rss_gb()
        train, val = FeatureSet(folder, "train"), FeatureSet(folder, "val")
        per_image = (rss_gb() - rss_closed) * 2**30 / (len(train) + len(val))
        gigabytes = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
        print(f"features: {len(train):,} train + {len(val):,} val x {args.dims} (fp16, {gigabytes:.1f} GB in "
              f"{len(train.shards) + len(val.shards)} shards), {args.classes} classes; "
              f"{time.perf_counter() - started:.0f} s to write or open")  # fmt: skip
        rss_before = rss_gb()
        reset_peak()
        print(f"opening the splits (labels, indices): {per_image:.1f} bytes per image")

        started = time.perf_counter()
        probe, scores, fits = select_and_fit(StageFeatures(train, "res5"), args.classes, args.l2, 0.2, seed=0,
                                             max_iter=args.max_iter, matmul_dtype=dtype,
                                             tolerance=args.tolerance)  # fmt: skip
        fit_s = time.perf_counter() - started
        top1 = accuracy(probe, StageFeatures(val, "res5"), k=1)
        print(f"wsp probe ({args.matmul_dtype} products, {torch.get_num_threads()} threads): sweep "
              f"{ {k: round(v, 2) for k, v in scores.items()} } -> l2={probe.l2:g}, val top-1 {top1:.2f}%, "
              f"{fit_s / 60:.1f} min; RSS {rss_before:.3f} GiB before the fit, {rss_gb('VmHWM'):.3f} GiB at its peak "
              "(the per-image part: the slope between two sizes)")  # fmt: skip
        print(
            "| fit | l2 | iterations | objective | largest gradient entry | converged |\n|---|---|---|---|---|---|"
        )
        for name, end in fits.items():
            l2 = probe.l2 if name == "refit" else name
            print(f"| {'refit on all rows' if name == 'refit' else 'sweep'} | {l2:g} | {end.iterations} | "
                  f"{end.objective:.5f} | {end.grad_max:.1e} | {end.converged} |")  # fmt: skip
        if not args.subsample:
            return

        # the same l2 on a subsample, by wsp and by scikit-learn, scored on the same val split
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.subsample]
        rows = torch.zeros(len(train), dtype=torch.bool).index_fill_(0, rows, True)
        x = torch.cat(
            [chunk[rows[start : start + len(chunk)]].float() for start, chunk in train.chunks("res5")]
        )
        y = train.labels[rows]
        vx = val.load("res5")
        started = time.perf_counter()
        ours = fit_logistic_regression(InMemoryFeatures(x, y), args.classes, probe.l2, max_iter=200,
                                       tolerance=args.tolerance)  # fmt: skip
        ours_top1, ours_s = (
            accuracy(ours, InMemoryFeatures(vx, val.labels), k=1),
            time.perf_counter() - started,
        )
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        started = time.perf_counter()
        reference = LogisticRegression(C=1 / (probe.l2 * len(x)), max_iter=200)
        reference.fit(((x - mean) / std).numpy(), y.numpy())
        theirs = 100 * (reference.predict(((vx - mean) / std).numpy()) == val.labels.numpy()).mean()
        print(f"{len(x):,}-row subsample at l2={probe.l2:g}: wsp (fp32, 200 iterations) {ours_top1:.2f}% in "
              f"{ours_s:.0f} s; scikit-learn (lbfgs, 200 iterations) {theirs:.2f}% in "
              f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    finally:
        if not args.folder:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
