from wsp.hashtags.parse import MAX_HASHTAG_CHARS, extract_hashtags, normalize, normalize_hashtags


def test_normalize_removes_separators_and_case():
    assert (
        normalize("Ursus_arctos") == normalize("#UrsusArctos") == normalize("ursus-arctos") == "ursusarctos"
    )
    assert normalize("jack-o'-lantern") == "jackolantern"
    assert normalize("St. Bernard") == "stbernard"


def test_extract_in_order_without_repeats():
    caption = "Lake day #GoldFish and #goldfish #Carassius_auratus! #love"
    assert extract_hashtags(caption) == ["goldfish", "carassiusauratus", "love"]


def test_hash_inside_a_word_does_not_start_a_hashtag():
    assert extract_hashtags("foo#bar #baz") == ["baz"]


def test_unicode_scripts_emoji_and_control_characters():
    caption = "😀😀 #東京 #Café #😀 #СОБАКА \x00\x07#tab\tbed #\u200b #ｆｕｌｌｗｉｄｔｈ ＃wide"
    tags = extract_hashtags(caption)
    assert tags == ["東京", "café", "собака", "tab", "fullwidth", "wide"]


def test_long_captions_and_long_hashtags_are_capped():
    assert extract_hashtags("#" + "a" * (MAX_HASHTAG_CHARS + 1)) == []
    caption = ("word " * 2000) + " #end"  # 10,005 characters
    assert extract_hashtags(caption) == ["end"]
    assert len(extract_hashtags(" ".join(f"#t{i}" for i in range(10_000)))) > 1000


def test_hashtag_lists_are_normalised_like_captions():
    assert normalize_hashtags(["#BrownBear", "brown_bear", 7, "", "Ursus arctos"]) == [
        "brownbear",
        "ursusarctos",
    ]
