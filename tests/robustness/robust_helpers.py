"""Shared builders for the robustness tests (and bench/bench_reliability.py).

Not a conftest: tests/test_train.py imports `conftest` by name, and a second
conftest module here could shadow it. Test modules import what they need.
The trained pipeline is cached per process (lru_cache), so every robustness
module shares one briefly trained tiny-encoder pipeline.
"""
import os
import random
from collections import Counter
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import spacy  # noqa: E402
from spacy.tokens import Doc  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

import spacy_ita  # noqa: E402,F401  (Doc extensions)
import spacy_ita.context.component  # noqa: E402,F401  (registers the ita_context factory)
from spacy_ita import VisualContext  # noqa: E402
from spacy_ita.context.registry import ImageExtractor, extractors  # noqa: E402

LABELS = ("LOC", "ORG", "PER")

# (text, entities, caption or None)
TRAIN_POSTS = [
    ("Lakers beat Boston tonight", [(0, 6, "ORG"), (12, 18, "ORG")], "basketball players on court"),
    ("Sunny morning in Boston", [(17, 23, "LOC")], "a harbour at dawn"),
    ("Kobe scores again", [(0, 4, "PER")], "a basketball player jumping"),
    ("Flying to Madrid next week", [(10, 16, "LOC")], None),
    ("Google opens an office in Zurich", [(0, 6, "ORG"), (26, 32, "LOC")], "a glass building"),
    ("Eating an orange in the park", [], "fruit on grass"),
    ("Ronaldo joins Madrid", [(0, 7, "PER"), (14, 20, "ORG")], "a football player in white"),
    ("Great show by Beyonce", [(14, 21, "PER")], None),
    ("Snow again in Oslo", [(14, 18, "LOC")], "white streets"),
    ("Nike shares fall", [(0, 4, "ORG")], None),
    ("Happy birthday Federer", [(15, 22, "PER")], "a tennis player smiling"),
    ("nothing to see here", [], None),
]


def entities(docs: Iterable[Doc]) -> List[List[Tuple[int, int, str]]]:
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]


def make_examples(nlp, posts=TRAIN_POSTS) -> List[Example]:
    examples = []
    for text, ents, caption in posts:
        doc = nlp.make_doc(text)
        if caption:
            doc._.visual_context = VisualContext(captions=[caption])
        examples.append(Example.from_dict(doc, {"entities": ents}))
    return examples


def blank_ita_nlp(encoder: str, **config) -> spacy.Language:
    nlp = spacy.blank("en")
    config["model"] = {"@architectures": "spacy-ita.ItaTagger.v1", "name": encoder}
    nlp.add_pipe("ita_ner", config=config)
    return nlp


def train_pipeline(encoder: str, steps: int = 25, learn_rate: float = 1e-3, **config):
    nlp = blank_ita_nlp(encoder, **config)
    examples = make_examples(nlp)
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    optimizer = Adam(learn_rate)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


@lru_cache(maxsize=None)
def trained_pipeline(encoder: str):
    """A tiny-encoder ita_ner pipeline, trained briefly (shared; do not mutate)."""
    return train_pipeline(encoder)


def make_tiny_encoder(path) -> str:
    """The same tiny random BERT as tests/conftest.py's fixture, for the bench."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from spacy_ita.encoders import bundled_encoder

    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def check_tagged(doc: Doc, text: str, labels: Sequence[str] = LABELS) -> None:
    """The doc kept its text and has valid, complete NER annotation."""
    assert doc.text == text, "the text changed"
    assert all(token.ent_iob_ in ("B", "I", "O") for token in doc), [
        (t.i, t.ent_iob_) for t in doc if t.ent_iob_ not in ("B", "I", "O")][:5]
    last_end = 0
    for ent in doc.ents:
        assert 0 <= ent.start < ent.end <= len(doc)
        assert ent.start >= last_end, "overlapping entities"
        assert ent.label_ in labels
        assert ent[0].ent_iob_ == "B" and all(t.ent_iob_ == "I" for t in ent[1:])
        last_end = ent.end


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
