import pytest

from wsp.hashtags.wordnet import imagenet1k_wnids, load_wordnet, provision, synset_to_wnid, wnid_to_synset


def test_wordnet_is_version_3_and_wnids_are_its_offsets():
    assert load_wordnet().get_version() == "3.0"
    assert wnid_to_synset("n01440764").name() == "tench.n.01"
    assert synset_to_wnid(wnid_to_synset("n02132136")) == "n02132136"


def test_imagenet1k_wnids_are_sorted_and_resolve():
    wnids = imagenet1k_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids)
    assert all(wnid_to_synset(w).pos() == "n" for w in wnids[::50])


def test_bad_wnid_is_a_clear_error():
    with pytest.raises(ValueError, match="not a WordNet noun id"):
        wnid_to_synset("tench")


def test_provision_is_idempotent():
    assert provision() == "already present"


def test_wnid_without_a_synset_is_a_clear_error():
    with pytest.raises(ValueError, match="n00000001: no WordNet 3.0 noun synset"):
        wnid_to_synset("n00000001")
