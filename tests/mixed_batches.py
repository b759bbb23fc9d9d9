"""Builders of the hostile-input tests in ner/ and context/ (and
bench/bench_reliability.py): mixed batches of posts, a cheap pixel extractor
for ita_context and the pipelines that use it. What all tests share (the
trained tiny-encoder pipeline, `check_tagged`) is in tests/helpers.py.
"""
import random
from collections import Counter
from typing import Any, Dict, List, Optional, Tuple

import spacy
from spacy.tokens import Doc

import spacy_ita.context.component  # noqa: F401  (registers the ita_context factory)
from helpers import trained_pipeline
from spacy_ita.context.registry import ImageExtractor, extractors

# A mixed stream of posts for batch tests: texts of many shapes, contexts of
# every kind, and 1 in 5 with an image that cannot be read.
_WORDS = ("Kobe", "Boston", "Google", "Madrid", "the", "game", "tonight", "in", "at",
          "#nba", "@lakers", "http://t.co/xYz", "😀", "مرحبا", "Zürich", "東京", "RT", ":",
          "Oslo", "Federer", "wins", "again", "!", "...", "new", "office")


def mixed_posts(n: int, seed: int = 0) -> List[Tuple[str, Optional[dict], Optional[str]]]:
    """(text, visual context dict or None, kind of image: None/'good'/'broken')."""
    rng = random.Random(seed)
    posts = []
    for i in range(n):
        length = rng.choice([0, 1, 3, 8, 15, 30, 90]) if i % 17 else 120
        text = " ".join(rng.choice(_WORDS) for _ in range(length))
        if i % 11 == 3:
            text = "   "
        context = None
        if i % 3 == 0:
            words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 60))]
            context = {"captions": [" ".join(words)]}
        elif i % 3 == 1:
            context = {"object_tags": ["ball", "court"], "ocr_text": ["SALE 50%"]}
        image = "broken" if i % 5 == 4 else ("good" if i % 2 else None)
        posts.append((text, context, image))
    return posts


# --- a cheap pixel extractor for ita_context -------------------------------

EXTRACTOR_CALLS: Counter = Counter()


class PixelTags(ImageExtractor):
    """Tags an image by shape and dominant channel. Refuses what a real model
    could not use (no pixels, not RGB), so a bad decode cannot pass unseen."""

    name = "robustness.pixel_tags.v1"
    field = "object_tags"

    def settings(self) -> Dict[str, Any]:
        return {}

    def extract(self, images: List[Any]) -> List[List[str]]:
        from PIL import ImageStat

        EXTRACTOR_CALLS["batches"] += 1
        tags = []
        for image in images:
            EXTRACTOR_CALLS["images"] += 1
            if image.mode != "RGB" or image.width < 1 or image.height < 1:
                raise ValueError(f"unusable decoded image {image.mode} {image.size}")
            shape = ("square" if image.width == image.height
                     else "wide" if image.width > image.height else "tall")
            means = ImageStat.Stat(image).mean
            tags.append([shape, ("red", "green", "blue")[means.index(max(means))]])
        return tags


@extractors.register("robustness.pixel_tags.v1")
def make_pixel_tags() -> PixelTags:
    return PixelTags()


def context_nlp(**config) -> spacy.Language:
    """A pipeline with only ita_context and the cheap extractor."""
    nlp = spacy.blank("en")
    settings = {"ocr_text": None, "object_tags": {"@spacy_ita_extractors": "robustness.pixel_tags.v1"}}
    settings.update(config)
    nlp.add_pipe("ita_context", config=settings)
    return nlp


def post_dicts(n: int, folder, seed: int = 0) -> List[Dict[str, Any]]:
    """JSON-able posts for batch runs: mixed texts and contexts; every other
    post has an image, and a fifth of all posts have a broken one."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for i, colour in enumerate(["red", "green", "blue", "white", "black", "orange"]):
        path = folder / f"good_{i}.png"
        Image.new("RGB", (20 + 7 * i, 30 - 3 * i), colour).save(path)
        good.append(str(path))
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "drawing.jpg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (folder / "truncated.png").write_bytes(Path(good[0]).read_bytes()[:30])
    (folder / "a_dir.jpg").mkdir(exist_ok=True)
    broken = [str(folder / name) for name in
              ("missing.jpg", "zero.jpg", "drawing.jpg", "truncated.png", "a_dir.jpg")]
    posts = []
    for i, (text, context, image) in enumerate(mixed_posts(n, seed)):
        value = None
        if image == "good":
            value = good[i % len(good)]
        elif image == "broken":
            value = broken[i % len(broken)]
        posts.append({"text": text, "context": context, "image": value})
    return posts


def docs_from_posts(nlp, posts: List[Dict[str, Any]]) -> List[Doc]:
    docs = []
    for post in posts:
        doc = nlp.make_doc(post["text"])
        doc._.visual_context = post["context"]
        doc._.image = post["image"]
        docs.append(doc)
    return docs


def multimodal_pipeline(encoder: str, folder) -> spacy.Language:
    """ita_context (cheap extractor, merging into existing contexts) + the
    trained ita_ner, as a separate loaded copy; also saved under folder."""
    from pathlib import Path

    Path(folder).mkdir(parents=True, exist_ok=True)
    trained_dir = Path(folder) / "ita_ner_only"
    trained_pipeline(encoder).to_disk(trained_dir)
    nlp = spacy.load(trained_dir)
    nlp.add_pipe("ita_context", first=True, config={
        "ocr_text": None, "object_tags": {"@spacy_ita_extractors": "robustness.pixel_tags.v1"},
        "existing_context": "merge", "batch_size": 8})
    nlp.to_disk(Path(folder) / "multimodal")
    return nlp


def doc_summary(doc: Doc) -> Dict[str, Any]:
    from spacy_ita.visual_context import get_visual_context

    context = get_visual_context(doc)
    return {
        "text": doc.text,
        "ents": [[e.start_char, e.end_char, e.label_] for e in doc.ents],
        "iob_ok": all(t.ent_iob_ in ("B", "I", "O") for t in doc),
        "image_error": doc._.image_error,
        "context": None if context is None else context.to_dict(),
    }
