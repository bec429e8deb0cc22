"""GPU-days of each study of the paper at full scale: the images the schedule rule processes x the cost
per image at a throughput (the paper's, or one measured by task=preflight). Used by
benchmarks/study_cost.py and task=preflight.

Cost per training image: 3 x the model's forward mult-adds at 224 px (forward + backward), counted by
wsp.models.stats on the real timm models. The paper's throughput: ResNeXt-101 32x16d, 2 epochs over
3.5B images (7.0B images) in about 22 days on 336 GPUs, i.e. 11.0 images/s per GPU, or
3 x 36.2 G x 11.0 = 1.19e12 mult-adds/s per GPU.

Corpus sizes are the paper's where it names them (IG-940M-1.5k for the headline and capacity; for data
size, shares of IG-3.5B-17k and of IG-940M-1.5k); the ablations (vocabulary, resampling, label noise,
loss) assume a 1B-image corpus, which the paper's supplementary fixes per experiment (?). Transfer:
fine-tuning is 30 epochs of ImageNet-1k; the ImageNet-only models train for the rule at 1.28M images
(113 epochs); a probe is one forward pass over train + val per target.
"""

from __future__ import annotations

from wsp.utils.schedule import paper_schedule_images

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}

PAPER_MACS_PER_S = 3 * 36.16e9 * 7.0e9 / (22 * 86400 * 336)
IN1K, IN5K, IN9K = 1.33e6, 6.6e6, 10.5e6  # train + val images of each probe target (IN-5k/9k: approximate)
IN1K_TRAIN = 1_281_167
ABLATION_CORPUS = 1.0e9  # (?)
PAPER_BATCH = 8064  # 336 GPUs x 24
SCHEDULE_SIZES = (IN1K_TRAIN, 3.5e6, 35e6, 350e6, 940e6, 1e9, 3.5e9)


def study_jobs(interpolation: str) -> dict[str, list[tuple[str, float, float, float]]]:
    """study -> [(model, images processed in pretraining, training images besides, forward-only images)]."""

    def rule(corpus: float) -> int:
        return paper_schedule_images(round(corpus), interpolation)

    finetune, scratch = 30 * IN1K_TRAIN, rule(IN1K_TRAIN)
    widths = ["4", "8", "16", "32", "48"]
    return {
        "headline": [("32x48d", rule(940e6), finetune, 0)],
        "capacity": [(f"32x{w}d", rule(940e6), finetune, 0) for w in widths]
        + [(f"32x{w}d", 0, scratch, 0) for w in widths],
        "data_size": [
            (f"32x{w}d", rule(corpus * share), 0, IN1K + IN5K + IN9K)
            for w in ("4", "8", "16")
            for corpus in (3.5e9, 940e6)  # IG-3.5B-17k, IG-940M-1.5k
            for share in (0.001, 0.01, 0.1, 1.0)
        ],  # fmt: skip
        "vocabulary": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K + IN5K + IN9K)] * 3,
        "resampling": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 3,
        "label_noise": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 4,
        "loss": [("32x16d", rule(ABLATION_CORPUS), 0, IN1K)] * 2,
    }


def study_gpu_days(macs_per_s: float, interpolation: str = "linear") -> dict[str, dict]:
    """study -> {jobs, images (processed in pretraining), gpu_days} at `macs_per_s` per GPU."""
    from wsp.models.stats import model_stats

    macs, table = {}, {}
    for study, planned in study_jobs(interpolation).items():
        images = gpu_days = 0.0
        for model, pretraining, trained, forward in planned:
            if model not in macs:
                macs[model] = model_stats(f"resnext101_{model}", 224, 1000)[1]
            images += pretraining
            gpu_days += macs[model] * (3 * (pretraining + trained) + forward) / macs_per_s / 86400
        table[study] = {"jobs": len(planned), "images": images, "gpu_days": gpu_days}
    return table


def peak_tflops(device, given: float | None = None) -> float | None:
    """The dense bf16 peak of a CUDA device, by name (or `given`); None where unknown or on CPU."""
    import torch

    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
