"""Linear-evaluation costs on CPU: feature extraction images/s for a small backbone, and the probe's
fit time on cached features vs scikit-learn's LogisticRegression (lbfgs) at the same regularisation.

    .venv/bin/python benchmarks/probe.py --model wsp_resnext_small --image-size 64 --per-class 100

The images are the synthetic target task (16 glyph classes, `--per-class` train and half as many val
images per class); the backbone is randomly initialised (fixed seed) or loaded from `--weights`. Both
fits see exactly the same standardised features.

    .venv/bin/python benchmarks/probe.py --model wsp_resnext_tiny --weights runs/demo/<run>/pretrain/backbone.safetensors
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="wsp_resnext_small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument(
        "--weights", help="backbone weights (e.g. a demo run's pretrain/backbone.safetensors)"
    )
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    from wsp.corpus.synthetic import generate
    from wsp.data.transfer import TransferDataModule
    from wsp.hashtags.vocab import build_vocabulary
    from wsp.models.backbones import create_backbone, load_weights
    from wsp.models.features import cached_features, extract
    from wsp.models.probe import accuracy, fit_logistic_regression

    root = Path(tempfile.mkdtemp(prefix="wsp-probe-"))
    try:
        generate(root, build_vocabulary("in1k"), concepts=16, posts=16, image_size=80, zipf_exponent=1.0,
                 multi_concept_rate=0.0, wrong_tag_rate=0.0, missing_tag_rate=0.0,
                 target_train_per_class=args.per_class, target_val_per_class=args.per_class // 2,
                 posts_per_file=16, seed=0)  # fmt: skip
        dm = TransferDataModule("imagefolder", str(root / "target"), batch_size=64, num_workers=args.workers,
                                image_size=args.image_size)  # fmt: skip
        torch.manual_seed(0)
        backbone = create_backbone(args.model)
        if args.weights:
            load_weights(backbone, args.weights)
        features = {}
        for split, loader in dm.feature_loaders().items():
            started = time.perf_counter()
            features[split] = cached_features(root / "features", split, extract(backbone, loader, ["res5"]))
            seconds = time.perf_counter() - started
            count = len(features[split][1])
            print(f"extract {split}: {count} images in {seconds:.1f} s = {count / seconds:.0f} images/s "
                  f"({args.model}, {args.image_size} px, {args.workers} workers, {torch.get_num_threads()} threads)")  # fmt: skip
        (x, y, _), (vx, vy, _) = features["train"], features["val"]
        x, vx = x["res5"], vx["res5"]
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        for l2 in args.l2:
            started = time.perf_counter()
            ours = accuracy(fit_logistic_regression(x, y, dm.num_classes, l2, max_iter=500), vx, vy, k=1)
            ours_s = time.perf_counter() - started
            started = time.perf_counter()
            reference = LogisticRegression(C=1 / (l2 * len(x)), max_iter=5000, tol=1e-6)
            reference.fit(((x - mean) / std).numpy(), y.numpy())
            theirs_s = time.perf_counter() - started
            theirs = 100 * (reference.predict(((vx - mean) / std).numpy()) == vy.numpy()).mean()
            print(f"l2={l2:g} ({len(x)} x {x.shape[1]} features, {dm.num_classes} classes): wsp {ours:.1f}% in "
                  f"{ours_s:.2f} s; sklearn {theirs:.1f}% in {theirs_s:.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
