"""What the tests in every folder of tests/ (and the benches in bench/)
build on: the tiny random encoder, a dozen annotated posts, ita_ner pipelines
trained on them, and a small MNER sample with the CPU training config.

Fixtures that wrap these are in tests/conftest.py; test modules import the
functions from here (`from helpers import ...`, tests/ is on pytest's path).
"""
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy  # noqa: E402
import spacy  # noqa: E402
from spacy.tokens import Doc  # noqa: E402
from spacy.training import Example  # noqa: E402
from thinc.api import Adam, fix_random_seed  # noqa: E402

from spacy_ita import VisualContext  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT = REPO_ROOT / "project"
CPU_CONFIG = PROJECT / "configs" / "ita.cfg"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LABELS = ("LOC", "ORG", "PER")

# (text, entities, caption or None): the caption tells whether "Phoenix" is a
# team or a city; some posts have no image at all.
POSTS = [
    ("Phoenix beat Denver tonight", [(0, 7, "ORG"), (13, 19, "ORG")], "basketball players on court"),
    ("Sunset over Phoenix", [(12, 19, "LOC")], "a desert city skyline"),
    ("Jordan scores again", [(0, 6, "PER")], "a basketball player jumping"),
    ("Flying to Jordan next week", [(10, 16, "LOC")], None),
    ("Apple opens a new store in Paris", [(0, 5, "ORG"), (27, 32, "LOC")], "a shop front"),
    ("Eating an apple in the park", [], "a red apple on grass"),
    ("Messi joins Miami", [(0, 5, "PER"), (12, 17, "ORG")], "a football player in pink"),
    ("Great concert by Adele", [(17, 22, "PER")], None),
    ("Rain again in London", [(14, 20, "LOC")], "grey sky over river"),
    ("Tesla stock is up", [(0, 5, "ORG")], None),
    ("Happy birthday Serena", [(15, 21, "PER")], "a tennis player smiling"),
    ("no entities here at all", [], None),
]


def make_tiny_encoder(path) -> str:
    """A randomly initialised 2-layer BERT with the bundled encoder's tokenizer,
    saved to `path`: fast for tests of mechanics, and its 64 positions force
    long sentences into windows. Seeded: every session builds the same weights,
    so a test that trains on them learns the same."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from spacy_ita.ner.encoders import bundled_encoder

    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_nlp(encoder: Optional[str] = None, **config) -> spacy.Language:
    """A blank English pipeline with an untrained ita_ner; `encoder` None is the
    bundled MiniLM."""
    nlp = spacy.blank("en")
    if encoder is not None:
        config["model"] = {"@architectures": "spacy-ita.ItaTagger.v1", "name": encoder}
    nlp.add_pipe("ita_ner", config=config)
    return nlp


def make_examples(nlp: spacy.Language, posts=POSTS, field: str = "captions") -> List[Example]:
    """Examples of (text, entities, context text or None) posts, the context in `field`."""
    examples = []
    for text, ents, context in posts:
        doc = nlp.make_doc(text)
        if context:
            doc._.visual_context = VisualContext(**{field: [context]})
        examples.append(Example.from_dict(doc, {"entities": ents}))
    return examples


def train(nlp: spacy.Language, examples: List[Example], steps: int,
          learn_rate: float = 3e-4) -> spacy.Language:
    """Initialise with seed 0 and take `steps` Adam updates on all examples."""
    fix_random_seed(0)
    nlp.initialize(lambda: examples)
    optimizer = Adam(learn_rate)
    for _ in range(steps):
        nlp.update(examples, sgd=optimizer)
    return nlp


@lru_cache(maxsize=None)
def trained_pipeline(encoder: str) -> spacy.Language:
    """An ita_ner pipeline briefly trained on POSTS, one per process (shared
    by the robustness modules: do not change it)."""
    nlp = make_nlp(encoder)
    return train(nlp, make_examples(nlp), 25, learn_rate=1e-3)


def entities(docs: Iterable[Doc]) -> List[List[Tuple[int, int, str]]]:
    return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in docs]


def mner_summary(docs: Iterable[Doc]) -> List[Tuple[Optional[str], List[str], List[Tuple]]]:
    """(image id, words, (start, end, label) of each entity) per doc, to compare
    what a reader makes of a file."""
    return [(doc._.image_id, [t.text for t in doc], [(e.start, e.end, e.label_) for e in doc.ents])
            for doc in docs]


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


# --- training runs: a small MNER corpus and the CPU config ------------------

MNER_SAMPLE = """IMGID:1
Kobe\tB-PER
beat\tO
Boston\tB-ORG

IMGID:2
Sunset\tO
over\tO
Boston\tB-LOC

IMGID:3
Federer\tB-PER
wins\tO
again\tO

IMGID:4
Rain\tO
in\tO
New\tB-LOC
York\tI-LOC
"""
MNER_CAPTIONS = "1.jpg :basketball\n2.jpg :a city at dusk\n"


def write_mner_sample(folder: Path) -> Tuple[Path, Path]:
    """MNER_SAMPLE (4 posts, 5 entities of LOC, ORG and PER) and its captions
    file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sample.txt").write_text(MNER_SAMPLE, encoding="utf8")
    (folder / "captions.txt").write_text(MNER_CAPTIONS, encoding="utf8")
    return folder / "sample.txt", folder / "captions.txt"


def cpu_config_with(encoder: str) -> str:
    """The project's CPU training config with `encoder` instead of the bundled one."""
    from thinc.api import Config

    config = Config().from_str(CPU_CONFIG.read_text(encoding="utf8"), interpolate=False)
    config["components"]["ita_ner"]["model"]["name"] = encoder
    return config.to_str()


def training_setup(folder: Path, encoder: str) -> Dict[str, Path]:
    """The MNER sample converted to .spacy and the CPU config with the encoder."""
    from spacy.tokens import DocBin

    from spacy_ita.corpus.mner import read_mner

    sample, captions = write_mner_sample(folder)
    corpus = folder / "sample.spacy"
    docs = list(read_mner(sample, captions, spacy.blank("en").vocab))
    DocBin(store_user_data=True, docs=docs).to_disk(corpus)
    (folder / "config.cfg").write_text(cpu_config_with(encoder), encoding="utf8")
    return {"config": folder / "config.cfg", "corpus": corpus, "output": folder / "output"}


def pipeline_parameters(path: Path) -> Dict[str, numpy.ndarray]:
    """Every weight of ita_ner in a saved pipeline, by layer and name."""
    model = spacy.load(path).get_pipe("ita_ner").model
    weights = {}
    for index, node in enumerate(model.walk()):
        for name in node.param_names:
            if node.has_param(name):
                weights[f"{index}/{name}"] = node.ops.to_numpy(node.get_param(name))
        for shim in node.shims:
            for name, value in shim._model.state_dict().items():
                weights[f"{index}/{name}"] = value.detach().cpu().numpy()
    return weights


def largest_difference(path_a: Path, path_b: Path) -> float:
    """The largest absolute difference between the ita_ner weights of two
    saved pipelines (inf if they do not have the same weights)."""
    a, b = pipeline_parameters(path_a), pipeline_parameters(path_b)
    if a.keys() != b.keys() or any(a[name].shape != b[name].shape for name in a):
        return float("inf")
    return max((float(numpy.abs(a[name].astype("float64") - b[name]).max()) for name in a),
               default=0.0)
