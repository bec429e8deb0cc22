import pytest

from wsp.utils.schedule import lr_multiplier, paper_schedule_images, peak_lr


def test_paper_schedule_warmup_peak_and_twenty_halvings():
    peak = peak_lr(0.1, 8064)
    assert peak == pytest.approx(3.15)
    total, warmup = 10_000, 500
    lr = [peak * lr_multiplier(s, total=total, warmup=warmup, warmup_start=0.1 / peak, schedule="step")
          for s in range(total)]  # fmt: skip
    assert lr[0] == pytest.approx(0.1)
    assert max(lr) == pytest.approx(3.15)
    assert lr[warmup] == pytest.approx(3.15)
    post = lr[warmup:]
    drops = [b / a for a, b in zip(post, post[1:], strict=False) if b != a]
    assert len(drops) == 20 and all(d == pytest.approx(0.5) for d in drops)
    assert lr[-1] == pytest.approx(3.15 / 2**20)


def test_cosine_ends_at_zero_and_constant_stays():
    kw = dict(total=100, warmup=0, warmup_start=1.0)
    assert lr_multiplier(100, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(50, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(99, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_multiplier(1, schedule="linear", **kw)


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_paper_schedule_meets_both_ends_in_images_processed(interpolation):
    assert paper_schedule_images(1_200_000, interpolation) == 144_000_000  # 120 epochs of 1.2M
    assert paper_schedule_images(3_500_000_000, interpolation) == 7_000_000_000  # 2 epochs of 3.5B
    assert paper_schedule_images(1000, interpolation) == 120 * 1000  # the nearer end's epochs outside them
    assert paper_schedule_images(10**10, interpolation) == 2 * 10**10


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_paper_schedule_never_decreases_in_corpus_size(interpolation):
    sizes = sorted({round(10 ** (k / 50)) for k in range(50, 551)})  # 10 .. 1e11, 50 points a decade
    images = [paper_schedule_images(n, interpolation) for n in sizes]
    assert all(a <= b for a, b in zip(images, images[1:], strict=False))
    demo = [paper_schedule_images(n, interpolation, [[500, 40], [8000, 8]]) for n in range(1, 20_000, 7)]
    assert all(a <= b for a, b in zip(demo, demo[1:], strict=False))


def test_linear_rule_interpolates_images_processed_linearly_in_corpus_size():
    n = 1_000_000_000  # IG-1B: 29% of the way from 1.2M to 3.5B in N, so 29% of the way from 1.44e8 to 7e9
    assert paper_schedule_images(n) == pytest.approx(2.1e9, rel=0.01)
    assert paper_schedule_images(n) == pytest.approx(
        1.44e8 + (7e9 - 1.44e8) * (n - 1.2e6) / (3.5e9 - 1.2e6), abs=1
    )
    assert paper_schedule_images(940_000_000) == pytest.approx(1.98e9, rel=0.01)  # the headline's IG-940M


def test_log_rule_interpolates_log_images_in_log_corpus_size():
    n = 1_000_000_000  # log N puts IG-1B 84% of the way from 1.2M to 3.5B
    t = 0.843
    assert paper_schedule_images(n, "log") == pytest.approx(1.44e8 * (7e9 / 1.44e8) ** t, rel=0.001)
    with pytest.raises(ValueError, match="task.interpolation=cubic"):
        paper_schedule_images(n, "cubic")
