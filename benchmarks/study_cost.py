"""GPU-days of each study at full scale: images processed (the paper's schedule rule) x cost per image.

    .venv/bin/python benchmarks/study_cost.py                      # at the paper's own GPU throughput
    .venv/bin/python benchmarks/study_cost.py --macs-per-s 2.0e13  # at a rate measured on your GPU

Cost per training image: 3 x the model's forward mult-adds at 224 px (forward + backward), counted by
wsp.models.stats on the real timm models. Throughput, by default, is the paper's: ResNeXt-101 32x16d,
2 epochs over 3.5B images (7.0B images) in about 22 days on 336 GPUs, i.e. 11.0 images/s per GPU, or
3 x 36.2 G x 11.0 = 1.19e12 mult-adds/s per GPU. A rate measured with benchmarks/gpu.py (images/s x
3 x mult-adds) replaces it with --macs-per-s.

Corpus sizes are the paper's where it names them (IG-940M for the headline and capacity, subsets of
IG-3.5B for data size); the ablations (vocabulary, resampling, label noise, loss) assume a 1B-image
corpus, which the paper's supplementary fixes per experiment (?). Transfer: fine-tuning is 30 epochs of
ImageNet-1k (100 from scratch), a probe one forward pass over train + val per target.
"""

from __future__ import annotations

import argparse

from wsp.utils.schedule import paper_schedule_images

PAPER_MACS_PER_S = 3 * 36.16e9 * 7.0e9 / (22 * 86400 * 336)
IN1K, IN5K, IN9K = 1.33e6, 6.6e6, 10.5e6  # train + val images of each probe target (IN-5k/9k: approximate)
IN1K_TRAIN = 1.28e6
ABLATION_CORPUS = 1.0e9  # (?)


def jobs() -> dict[str, list[tuple[str, float, float, float]]]:
    """study -> [(model, corpus images, training images besides pretraining, forward-only images)]."""
    finetune, scratch = 30 * IN1K_TRAIN, 100 * IN1K_TRAIN
    widths = ["4", "8", "16", "32", "48"]
    return {
        "headline": [("32x48d", 940e6, finetune, 0)],
        "capacity": [(f"32x{w}d", 940e6, finetune, 0) for w in widths]
        + [(f"32x{w}d", 0, scratch, 0) for w in widths],
        "data_size": [
            (f"32x{w}d", 3.5e9 * share, 0, IN1K + IN5K + IN9K)
            for w in ("4", "8", "16")
            for share in (0.001, 0.01, 0.1, 1.0)
        ],  # fmt: skip
        "vocabulary": [("32x16d", ABLATION_CORPUS, 0, IN1K + IN5K + IN9K)] * 3,
        "resampling": [("32x16d", ABLATION_CORPUS, 0, IN1K)] * 3,
        "label_noise": [("32x16d", ABLATION_CORPUS, 0, IN1K)] * 4,
        "loss": [("32x16d", ABLATION_CORPUS, 0, IN1K)] * 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--macs-per-s", type=float, default=PAPER_MACS_PER_S, help="per GPU, training")
    args = parser.parse_args()

    from wsp.models.stats import model_stats

    macs = {}
    print(f"throughput: {args.macs_per_s:.3g} mult-adds/s per GPU\n")
    print("| study | jobs | images processed (pretraining) | GPU-days |")
    print("|---|---|---|---|")
    for study, planned in jobs().items():
        images = gpu_days = 0.0
        for model, corpus, trained, forward in planned:
            if model not in macs:
                macs[model] = model_stats(f"resnext101_{model}", 224, 1000)[1]
            pretraining = paper_schedule_images(int(corpus)) if corpus else 0
            images += pretraining
            work = macs[model] * (3 * (pretraining + trained) + forward)
            gpu_days += work / args.macs_per_s / 86400
        print(f"| {study} | {len(planned)} | {images:.3g} | {gpu_days:,.0f} |")


if __name__ == "__main__":
    main()
