import pytest

from wsp.utils.schedule import lr_multiplier, peak_lr


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
