"""A synthetic social-media corpus whose visual concepts are real ImageNet-1k WordNet synsets.

Each concept is drawn as one procedural glyph (a shape in a fill style) under heavy nuisance variation:
random colours, position, scale, rotation and background clutter, so colour statistics say nothing about
the concept and random convolutional features do poorly. Posts carry captions with hashtags the way
people write them: real lemma spellings of the pictured concept (#goldfish, #CarassiusAuratus),
off-vocabulary tags (#love), and sometimes a wrong concept's tag. Concept frequencies are Zipfian.

Written layout (every later stage reads it by path):
    posts/posts-00000.jsonl ...   {"key", "image": "images/000000.jpg", "caption"}
    posts/images/*.jpg
    target/{train,val}/<wnid>/*.jpg   a clean labelled target task in the ImageNet folder layout
    target_in1k/...                   with outside_in1k > 0: the target restricted to ImageNet-1k concepts
    concepts.json                     the concepts, their glyphs and posting frequencies
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from wsp.hashtags.vocab import Vocabulary
from wsp.hashtags.wordnet import imagenet1k_wnids

SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "arrow",
    "heart",
    "bolt",
    "ell",
    "diamond",
    "moon",
)
FILLS = ("solid", "outline")
# Concepts the docs and tests name: goldfish (#goldfish = #carassiusauratus), brown bear (#brownbear = #ursusarctos).
ANCHOR_WNIDS = ("n01443537", "n02132136")
OFF_VOCABULARY_TAGS = (
    "love", "instagood", "photooftheday", "nofilter", "picoftheday", "tbt", "happy", "weekend",
    "instadaily", "vsco", "follow", "like4like", "summer", "friends", "travel", "fun", "art",
)  # fmt: skip
MAX_ROTATION = np.pi / 6  # glyphs keep a rough upright pose, as photographed objects mostly do
CAPTION_WORDS = [
    "what",
    "a",
    "day",
    "so",
    "happy",
    "look",
    "at",
    "this",
    "finally",
    "weekend",
    "vibes",
    "with",
    "my",
    "best",
    "😍",
    "🔥",
    "✨",
    "wow",
]


@dataclass(frozen=True)
class Concept:
    wnid: str
    lemmas: tuple[str, ...]
    shape: str
    fill: str
    frequency: float  # share of posts that picture it


def choose_concepts(vocabulary: Vocabulary, count: int, zipf_exponent: float, seed: int,
                    outside_in1k: int = 0) -> list[Concept]:  # fmt: skip
    """`count` synsets with several lemmas (so spellings merge), Zipfian frequencies: ImageNet-1k synsets
    (`vocabulary` is the in1k one), and `outside_in1k` of them other ImageNet-22k synsets whose hashtags
    the in1k vocabulary cannot label (the vocabulary study's concepts)."""
    if not 2 <= count <= len(SHAPES) * len(FILLS):
        raise ValueError(f"synthetic.concepts={count}: must be between 2 and {len(SHAPES) * len(FILLS)}")
    if not 0 <= outside_in1k <= count - len(ANCHOR_WNIDS):
        raise ValueError(f"synthetic.outside_in1k={outside_in1k}: must be in [0, synthetic.concepts - 2]")
    rng = np.random.default_rng(seed)
    lemmas = {label.wnid: label.lemmas for label in vocabulary.labels}
    multi_lemma = [w for w in imagenet1k_wnids() if len(lemmas[w]) > 1 and w not in ANCHOR_WNIDS]
    inside = count - len(ANCHOR_WNIDS) - outside_in1k
    wnids = list(ANCHOR_WNIDS) + [str(w) for w in rng.choice(multi_lemma, size=inside, replace=False)]
    if outside_in1k:
        others = _outside_in1k_synsets(set(vocabulary.hashtag_to_labels))
        for i in sorted(rng.choice(len(others), size=outside_in1k, replace=False)):
            wnids.append(others[i][0])
            lemmas[others[i][0]] = others[i][1]
    glyphs = [(shape, fill) for fill in FILLS for shape in SHAPES][:count]
    ranks = rng.permutation(count)  # which concept is frequent is unrelated to its glyph
    mass = 1.0 / (ranks + 1.0) ** zipf_exponent
    mass /= mass.sum()
    return [
        Concept(w, lemmas[w], shape, fill, float(m))
        for w, (shape, fill), m in zip(wnids, glyphs, mass, strict=True)
    ]


def _outside_in1k_synsets(in1k_hashtags: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    """ImageNet-22k synsets outside ImageNet-1k with several lemmas, none of them an in1k hashtag."""
    from timm.data import ImageNetInfo

    from wsp.hashtags.parse import normalize_hashtags
    from wsp.hashtags.wordnet import wnid_to_synset

    in1k = set(imagenet1k_wnids())
    found = []
    for wnid in ImageNetInfo("imagenet-22k").label_names():
        if wnid in in1k:
            continue
        names = tuple(wnid_to_synset(wnid).lemma_names())
        if len(names) > 1 and not set(normalize_hashtags(names)) & in1k_hashtags:
            found.append((wnid, names))
        if len(found) == 400:  # plenty to draw from; reading all 21k synsets takes seconds
            break
    return found


def _polygon(shape: str) -> np.ndarray:
    """Vertices of a glyph in unit coordinates (radius about 1)."""
    t = np.linspace(0, 2 * np.pi, 7)[:-1]
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * 0.75
    if shape == "triangle":
        return np.array([[0, -1], [0.87, 0.5], [-0.87, 0.5]])
    if shape == "star":
        a = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.4)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        w = 0.3
        return np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ]
        )
    if shape == "hexagon":
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "arrow":
        return np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.7], [1, 0], [0.2, 0.7], [0.2, 0.25], [-1, 0.25]])
    if shape == "heart":
        a = np.linspace(0, 2 * np.pi, 40)
        x, y = 16 * np.sin(a) ** 3, -(13 * np.cos(a) - 5 * np.cos(2 * a) - 2 * np.cos(3 * a) - np.cos(4 * a))
        return np.stack([x, y], 1) / 17
    if shape == "bolt":
        return np.array(
            [[0.2, -1], [-0.6, 0.1], [-0.05, 0.1], [-0.3, 1], [0.6, -0.2], [0.05, -0.2], [0.35, -1]]
        )
    if shape == "ell":
        return np.array([[-0.8, -1], [-0.3, -1], [-0.3, 0.5], [0.8, 0.5], [0.8, 1], [-0.8, 1]])
    if shape == "diamond":
        return np.array([[0, -1], [0.5, 0], [0, 1], [-0.5, 0]])
    if shape == "moon":
        a = np.linspace(-0.6 * np.pi, 0.6 * np.pi, 20)
        outer = np.stack([np.cos(a), np.sin(a)], 1)
        inner = np.stack([0.55 * np.cos(a[::-1]) + 0.2, 0.85 * np.sin(a[::-1])], 1)
        return np.concatenate([outer, inner])
    raise ValueError(f"unknown shape {shape!r}")


def _contrasting_colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    while True:
        bg, fg = rng.integers(0, 256, size=(2, 3))
        if abs(bg.mean() - fg.mean()) > 60:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def _draw_glyph(draw: ImageDraw.ImageDraw, concept: Concept, centre, radius: float, colour, rng) -> None:
    width = max(2, int(radius * 0.3))
    if concept.shape == "circle":
        box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
        if concept.fill == "solid":
            draw.ellipse(box, fill=colour)
        else:
            draw.ellipse(box, outline=colour, width=width)
        return
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = [tuple(p) for p in (_polygon(concept.shape) @ rotation.T) * radius + centre]
    if concept.fill == "solid":
        draw.polygon(points, fill=colour)
    else:
        draw.line(points + points[:1], fill=colour, width=width, joint="curve")


def render(concepts: list[Concept], size: int, rng: np.random.Generator) -> bytes:
    """A JPEG picturing `concepts` (the first large, any others smaller) on a cluttered background."""
    scale = 4  # draw large and downsample: anti-aliased edges
    canvas = size * scale
    bg, fg = _contrasting_colours(rng)
    image = Image.new("RGB", (canvas, canvas), bg)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(1, 5)):  # clutter: lines and dots in random colours
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = rng.uniform(0, canvas, 4)
        draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 3) * scale))
        r = rng.uniform(1, 3) * scale
        cx, cy = rng.uniform(0, canvas, 2)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    for i, concept in enumerate(concepts):
        radius = canvas * (rng.uniform(0.26, 0.38) if i == 0 else rng.uniform(0.12, 0.18))
        centre = rng.uniform(radius, canvas - radius, 2)
        colour = fg if i == 0 else tuple(int(v) for v in 255 - np.array(bg))
        _draw_glyph(draw, concept, centre, radius, colour, rng)
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (size, size, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _spell(lemma: str, rng: np.random.Generator) -> str:
    """A hashtag spelling of a lemma as people type it: #goldfish, #CarassiusAuratus, #brown_bear."""
    words = lemma.replace("-", "_").split("_")
    style = rng.integers(3)
    if style == 0:
        return "#" + "".join(words).lower()
    if style == 1:
        return "#" + "".join(w[:1].upper() + w[1:] for w in words)
    return "#" + "_".join(words)


def caption(pictured: list[Concept], everyone: list[Concept], rng: np.random.Generator, wrong_tag_rate: float,
            missing_tag_rate: float) -> str:  # fmt: skip
    tags = []
    for concept in pictured:
        if rng.random() >= missing_tag_rate:
            for lemma in rng.choice(concept.lemmas, size=rng.integers(1, 3), replace=True):
                tags.append(_spell(str(lemma), rng))
    if rng.random() < wrong_tag_rate:
        others = [c for c in everyone if c not in pictured]
        tags.append(_spell(str(rng.choice(others[int(rng.integers(len(others)))].lemmas)), rng))
    tags += ["#" + t for t in rng.choice(OFF_VOCABULARY_TAGS, size=rng.integers(0, 4), replace=False)]
    words = list(rng.choice(CAPTION_WORDS, size=rng.integers(2, 7)))
    return " ".join(words + [str(t) for t in rng.permutation(tags)])


def generate(output: str | Path, vocabulary: Vocabulary, *, concepts: int, posts: int, image_size: int,
             zipf_exponent: float, multi_concept_rate: float, wrong_tag_rate: float, missing_tag_rate: float,
             target_train_per_class: int, target_val_per_class: int, posts_per_file: int, seed: int,
             outside_in1k: int = 0) -> dict:  # fmt: skip
    """Write the synthetic posts and target task(s) under `output`; return a summary."""
    output = Path(output)
    chosen = choose_concepts(vocabulary, concepts, zipf_exponent, seed, outside_in1k)
    in1k = set(imagenet1k_wnids())
    frequencies = np.array([c.frequency for c in chosen])
    image_dir = output / "posts" / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for start in tqdm(range(0, posts, posts_per_file), desc="synthetic posts", unit="file"):
        path = output / "posts" / f"posts-{start // posts_per_file:05d}.jsonl"
        with path.open("w") as table:
            for index in range(start, min(start + posts_per_file, posts)):
                rng = np.random.default_rng([seed, 1, index])
                count = 2 if rng.random() < multi_concept_rate else 1
                pictured = [
                    chosen[i] for i in rng.choice(len(chosen), size=count, replace=False, p=frequencies)
                ]
                key = f"{index:07d}"
                (image_dir / f"{key}.jpg").write_bytes(render(pictured, image_size, rng))
                text = caption(pictured, chosen, rng, wrong_tag_rate, missing_tag_rate)
                table.write(json.dumps({"key": key, "image": f"images/{key}.jpg", "caption": text}) + "\n")
        files.append(path.name)
    for split, per_class, stream in (("train", target_train_per_class, 2), ("val", target_val_per_class, 3)):
        for ci, concept in enumerate(chosen):
            targets = ["target", "target_in1k"] if outside_in1k and concept.wnid in in1k else ["target"]
            for target in targets:
                (output / target / split / concept.wnid).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                rng = np.random.default_rng([seed, stream, ci, j])
                image = render([concept], image_size, rng)
                for target in targets:
                    (output / target / split / concept.wnid / f"{concept.wnid}_{j:04d}.jpg").write_bytes(
                        image
                    )
    summary = {"concepts": [c.__dict__ for c in chosen], "posts": posts, "post_files": files}
    (output / "concepts.json").write_text(json.dumps(summary, indent=1))
    return summary
