import pytest

from wsp.utils.schedule import lr_multiplier, paper_schedule_images, peak_lr


def test_paper_schedule_warmup_peak_and_twenty_halvings():
    peak = peak_lr(0.1, 8064)
    assert peak == pytest.approx(3.15)
    total, warmup = 10_000, 500
    lr = [peak * lr_multiplier(s, total_steps=total, warmup_steps=warmup, warmup_start=0.1 / peak, schedule="step")
          for s in range(total)]  # fmt: skip
    assert lr[0] == pytest.approx(0.1)
    assert max(lr) == pytest.approx(3.15)
    assert lr[warmup] == pytest.approx(3.15)
    post = lr[warmup:]
    drops = [b / a for a, b in zip(post, post[1:], strict=False) if b != a]
    assert len(drops) == 20 and all(d == pytest.approx(0.5) for d in drops)
    assert lr[-1] == pytest.approx(3.15 / 2**20)


def test_cosine_ends_at_zero_and_constant_stays():
    kw = dict(total_steps=100, warmup_steps=0, warmup_start=1.0)
    assert lr_multiplier(100, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(50, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(99, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError, match="optim.schedule"):
        lr_multiplier(1, schedule="linear", **kw)


@pytest.mark.parametrize("interpolation", ["log", "linear"])
def test_paper_schedule_length_meets_both_extremes(interpolation):
    assert paper_schedule_images(1_200_000, interpolation) == 120 * 1_200_000
    assert paper_schedule_images(3_500_000_000, interpolation) == 2 * 3_500_000_000
    assert paper_schedule_images(1000, interpolation) == 120 * 1000  # held at the extremes outside them
    assert paper_schedule_images(10**10, interpolation) == 2 * 10**10


def test_log_and_linear_interpolation_differ_as_documented():
    n = 1_000_000_000  # IG-1B: log N puts it 84% of the way to 3.5B, linear N only 29%
    log_epochs = paper_schedule_images(n, "log") / n
    linear_epochs = paper_schedule_images(n, "linear") / n
    assert log_epochs == pytest.approx(120 - 118 * 0.8430, abs=0.01)
    assert linear_epochs == pytest.approx(120 - 118 * (n - 1.2e6) / (3.5e9 - 1.2e6))
    with pytest.raises(ValueError, match="task.interpolation=cubic"):
        paper_schedule_images(n, "cubic")
