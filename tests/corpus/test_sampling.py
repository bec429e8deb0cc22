import numpy as np
import pytest

from wsp.corpus.sampling import ImageWeights, label_masses


def label_frequencies(label_sets, num_labels):
    """f_l as the builder accumulates it: each image adds 1/k to each of its k labels."""
    frequencies = np.zeros(num_labels)
    for labels in label_sets:
        for label in labels:
            frequencies[label] += 1.0 / len(labels)
    return frequencies


def zipf_corpus(num_labels=200, images=60_000, seed=0):
    """Single-label images with Zipfian label counts (the hashtag distribution's shape)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_labels + 1)
    return [[int(label)] for label in rng.choice(num_labels, size=images, p=p / p.sum())]


def sampled_histogram(label_sets, scheme, draws=400_000, seed=1):
    frequencies = label_frequencies(label_sets, 200)
    weights = ImageWeights(frequencies, scheme)
    w = np.array([weights(labels) for labels in label_sets])
    drawn = np.random.default_rng(seed).choice(len(label_sets), size=draws, p=w / w.sum())
    histogram = np.bincount([label_sets[i][0] for i in drawn], minlength=200)
    return frequencies, histogram


@pytest.mark.parametrize(("scheme", "slope"), [("natural", 1.0), ("sqrt", 0.5), ("uniform", 0.0)])
def test_sampled_label_histogram_has_the_schemes_log_log_slope(scheme, slope):
    frequencies, histogram = sampled_histogram(zipf_corpus(), scheme)
    seen = (frequencies >= 20) & (histogram > 0)
    fitted = np.polyfit(np.log(frequencies[seen]), np.log(histogram[seen]), 1)[0]
    assert fitted == pytest.approx(slope, abs=0.05)


def received_mass(label_sets, scheme):
    """Label mass when images are drawn by weight: each image gives 1/k of its weight to each label."""
    frequencies = label_frequencies(label_sets, 3)
    weights = ImageWeights(frequencies, scheme)
    w = np.array([weights(labels) for labels in label_sets])
    received = np.zeros(3)
    for labels, wi in zip(label_sets, w, strict=True):
        received[labels] += wi / len(labels)
    return w.sum(), received, label_masses(frequencies, scheme)


def test_single_label_images_get_exactly_the_label_masses():
    total, received, masses = received_mass([[0]] * 9 + [[1]] * 4 + [[2]], "sqrt")
    assert total == pytest.approx(1.0)
    assert received == pytest.approx(masses)
    assert masses == pytest.approx(np.array([3, 2, 1]) / 6)


def test_multi_label_images_keep_weights_normalised_and_masses_close():
    label_sets = [[0], [0], [0], [0, 1], [1, 2], [2], [1]]
    assert label_frequencies(label_sets, 3).tolist() == [3.5, 2.0, 1.5]
    total, received, masses = received_mass(label_sets, "sqrt")
    assert total == pytest.approx(1.0)
    assert received == pytest.approx(masses, rel=0.05)


def test_unknown_scheme_is_an_error():
    with pytest.raises(ValueError, match="natural, sqrt, uniform"):
        label_masses(np.ones(3), "log")
