import pytest

from wsp.hashtags.parse import extract_hashtags, normalize
from wsp.hashtags.vocab import Vocabulary, build_vocabulary

BROWN_BEAR = "n02132136"
GOLDFISH = "n01443537"


def wnids_of(vocab, caption):
    return [vocab.labels[i].wnid for i in vocab.labels_of(extract_hashtags(caption))]


def test_brownbear_and_ursusarctos_give_one_label(in1k):
    assert wnids_of(in1k, "#brownbear") == wnids_of(in1k, "#UrsusArctos") == [BROWN_BEAR]
    assert wnids_of(in1k, "#brownbear #ursus_arctos #bruin") == [BROWN_BEAR]


def test_goldfish_spellings_merge_and_off_vocabulary_tags_are_ignored(in1k):
    assert wnids_of(in1k, "#goldfish #CarassiusAuratus #love #photooftheday") == [GOLDFISH]
    assert wnids_of(in1k, "#love #photooftheday") == []


def test_in1k_has_one_label_per_synset(in1k):
    assert len(in1k) == 1000
    assert in1k.labels[0].wnid == "n01440764" and in1k.labels[0].name == "tench"


@pytest.mark.parametrize(("policy", "expected"), [("first_sense", 1), ("all", 2), ("drop", 0)])
def test_ambiguous_hashtag_policies(policy, expected):
    # 'crane' is a lemma of both crane.n.05 (the bird, n02012849) and crane.n.04 (the machine, n03126707).
    vocab = build_vocabulary("wnids", ["n02012849", "n03126707"], ambiguous=policy)
    assert len(vocab.labels_of(["crane"])) == expected


def test_first_sense_picks_wordnets_earlier_sense():
    vocab = build_vocabulary("wnids", ["n02012849", "n03126707"], ambiguous="first_sense")
    (label,) = vocab.labels_of(["crane"])
    from wsp.hashtags.wordnet import load_wordnet, synset_to_wnid

    senses = [synset_to_wnid(s) for s in load_wordnet().synsets("crane", pos="n")]
    first = min(("n02012849", "n03126707"), key=senses.index)
    assert vocab.labels[label].wnid == first


def test_restrict_renumbers_and_forgets_other_labels(in1k):
    bear, fish = in1k.labels_of(["brownbear"])[0], in1k.labels_of(["goldfish"])[0]
    small = in1k.restrict([bear, fish])
    assert [label.wnid for label in small.labels] == [BROWN_BEAR, GOLDFISH]
    assert small.labels_of(["ursusarctos", "carassiusauratus", "tench"]) == [0, 1]


def test_json_round_trip(in1k):
    again = Vocabulary.from_json(in1k.to_json())
    assert again.labels == in1k.labels and again.hashtag_to_labels == in1k.hashtag_to_labels


def test_unknown_vocabulary_and_policy_are_errors():
    with pytest.raises(ValueError, match="unknown vocabulary"):
        build_vocabulary("nope")
    with pytest.raises(ValueError, match="ambiguous"):
        build_vocabulary("wnids", ["n02012849"], ambiguous="guess")


@pytest.fixture(scope="module")
def wordnet_nouns():
    return build_vocabulary("wordnet")


def test_wordnet_vocabulary_covers_every_noun_synset(wordnet_nouns):
    assert len(wordnet_nouns) == 82_115  # WordNet 3.0 noun synsets
    assert wnids_of(wordnet_nouns, "#brownbear #ursusarctos") == [BROWN_BEAR]
    assert wnids_of(wordnet_nouns, "#love") == ["n07543288"]  # love.n.01: off-vocabulary for in1k only


def test_wnids_and_hashtag_list_files(tmp_path):
    (tmp_path / "wnids.txt").write_text(f"# my classes\n{BROWN_BEAR}\n{GOLDFISH}\n")
    from_file = build_vocabulary("wnids", list_file=str(tmp_path / "wnids.txt"))
    assert [label.wnid for label in from_file.labels] == [BROWN_BEAR, GOLDFISH]
    (tmp_path / "tags.txt").write_text("#UrsusArctos\ngoldfish\nnotaword\n")
    from_tags = build_vocabulary("hashtags", list_file=str(tmp_path / "tags.txt"))
    assert sorted(from_tags.hashtag_to_labels) == ["goldfish", "ursusarctos"]  # only listed spellings map
    assert from_tags.labels_of(["brownbear"]) == []
    assert wnids_of(from_tags, "#ursus_arctos") == [BROWN_BEAR]


def test_in1k_label_count_on_a_corpus_where_every_lemma_occurs(tmp_path, in1k, corpus_dir):
    """The paper's IN-1k vocabulary has ~1.5k hashtags; canonicalised, they are at most 1,000 labels."""
    import json

    import webdataset as wds

    from wsp.corpus.build import BuildOptions, build
    from wsp.corpus.posts import Columns

    image = next(iter(wds.WebDataset(str(sorted(corpus_dir.glob("train-*.tar"))[0]), shardshuffle=False)))[
        "jpg"
    ]
    (tmp_path / "a.jpg").write_bytes(image)
    lemmas = sorted({lemma for label in in1k.labels for lemma in label.lemmas})
    # as people type them: #jackolantern for jack-o'-lantern
    rows = [
        {"key": f"p{i}", "image": "a.jpg", "caption": "#" + normalize(lemma)}
        for i, lemma in enumerate(lemmas)
    ]
    (tmp_path / "posts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    counts = {}
    for policy in ("first_sense", "all", "drop"):
        vocab = build_vocabulary("in1k", ambiguous=policy)
        stats = build(
            [tmp_path / "posts.jsonl"], tmp_path / policy, vocab, Columns(), BuildOptions(val_fraction=0.0)
        )
        counts[policy] = stats["labels"]["kept"]
    assert len(in1k.hashtag_to_labels) == 1804  # distinct hashtag forms of the 1,000 synsets' lemmas
    assert counts == {"first_sense": 998, "all": 1000, "drop": 993}


def test_imagenet_k_takes_in1k_plus_the_most_populous_other_classes(tmp_path):
    from wsp.hashtags.vocab import imagenet_k_wnids

    # a miniature ImageNet-22k tree: other classes with 5, 3, 3 and 1 images, plus an IN-1k class folder
    root, cache = tmp_path / "imagenet22k", tmp_path / "cache"
    for wnid, n in {"n00017222": 5, "n00021265": 3, "n00015388": 3, "n00019128": 1, "n01440764": 9}.items():
        (root / wnid).mkdir(parents=True)
        for i in range(n):
            (root / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"jpeg")
    chosen = imagenet_k_wnids(root, 1002, index_cache=cache)
    assert len(chosen) == 1002 and chosen == sorted(chosen)
    others = sorted(set(chosen) - {label.wnid for label in build_vocabulary("in1k").labels})
    assert others == ["n00015388", "n00017222"]  # 5 images, then the smaller wnid of the two with 3
    vocab = build_vocabulary("imagenet_k", imagenet22k_root=str(root), classes=1002, index_cache=str(cache))
    assert [label.wnid for label in vocab.labels] == chosen
    with pytest.raises(ValueError, match="only 4 classes beyond IN-1k"):
        imagenet_k_wnids(root, 1005, index_cache=cache)


def test_imagenet_k_from_a_wnid_file_keeps_its_order_and_needs_no_tree(tmp_path):
    (tmp_path / "in5k.txt").write_text("# pinned\nn02132136\nn01443537\n")
    vocab = build_vocabulary("imagenet_k", list_file=str(tmp_path / "in5k.txt"), classes=2)
    assert [label.wnid for label in vocab.labels] == [BROWN_BEAR, GOLDFISH]
    with pytest.raises(ValueError, match="needs corpus.list_file"):
        build_vocabulary("imagenet_k", classes=5000)
