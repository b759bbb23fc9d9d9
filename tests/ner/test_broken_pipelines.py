"""Issue 6, point 6: broken pipelines on disk fail with a clear message, and
nothing in spacy_ita unpickles untrusted files.
"""
import ast
import os
import re
import shutil
from pathlib import Path

import pytest
import spacy
import srsly

from helpers import trained_pipeline

PACKAGE = Path(__file__).resolve().parents[2] / "spacy_ita"


@pytest.fixture(scope="module")
def saved(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    trained_pipeline(tiny_encoder).to_disk(path)
    return path


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "pipeline"
    shutil.copytree(saved, target)
    return target


def load_error(path):
    with pytest.raises(Exception) as excinfo:
        nlp = spacy.load(path)
        nlp("Kobe visits Boston")
    return excinfo


def test_the_intact_copy_loads(copy):
    doc = spacy.load(copy)("Kobe visits Boston")
    assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)


def test_missing_weights_file_names_it(copy):
    os.remove(copy / "ita_ner" / "model")
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, OSError)
    assert str(copy / "ita_ner" / "model") in str(excinfo.value)


def test_missing_config_is_spacys_clear_error(copy):
    os.remove(copy / "config.cfg")
    excinfo = load_error(copy)
    assert "config" in str(excinfo.value).lower()


def _truncate(path: Path, keep):
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])


TRUNCATIONS = {
    "empty": lambda n: 0,
    "first_10_bytes": lambda n: 10,
    "half": lambda n: n // 2,
    "all_but_one_byte": lambda n: n - 1,
}


@pytest.mark.parametrize("damage", [*TRUNCATIONS, "random_bytes", "json_instead"])
def test_damaged_weights_file_is_a_clear_error(copy, damage):
    model = copy / "ita_ner" / "model"
    if damage in TRUNCATIONS:
        _truncate(model, TRUNCATIONS[damage])
    elif damage == "random_bytes":
        model.write_bytes(os.urandom(4096))
    else:
        model.write_text('{"weights": [1, 2, 3]}')
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert "ita_ner" in message and str(copy / "ita_ner") in message


def test_corrupt_weights_inside_an_intact_file_are_a_clear_error(copy):
    """The outer container reads, the torch state inside does not."""
    model = copy / "ita_ner" / "model"
    msg = srsly.msgpack_loads(model.read_bytes())
    (node,) = [i for i, shims in enumerate(msg["shims"]) if shims]
    shim = srsly.msgpack_loads(msg["shims"][node][0])  # thinc's {"config", "state"}
    module = srsly.msgpack_loads(shim["state"])  # serialize_module's blob
    module["state"] = module["state"][: len(module["state"]) // 3]  # torch.save bytes
    shim["state"] = srsly.msgpack_dumps(module)
    msg["shims"][node][0] = srsly.msgpack_dumps(shim)
    model.write_bytes(srsly.msgpack_dumps(msg))
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, ValueError)
    assert "ita_ner model weights" in str(excinfo.value)


def test_truncated_cfg_is_a_clear_error(copy):
    _truncate(copy / "ita_ner" / "cfg", lambda n: n // 2)
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, ValueError)
    assert "ita_ner" in str(excinfo.value) and "cfg" in str(excinfo.value)


def _edit_config(path: Path, old: str, new: str):
    config = path / "config.cfg"
    text = config.read_text(encoding="utf8")
    assert old in text
    config.write_text(text.replace(old, new), encoding="utf8")


@pytest.mark.parametrize("old,new,expected", [
    ("spacy-ita.ItaTagger.v1", "spacy-ita.ItaTagger.v9", "spacy-ita.ItaTagger.v9"),
    ("spacy-ita.ItaTagger.v1", "spacy.TransitionBasedParser.v2", "architectures|field|model"),
    ('factory = "ita_ner"', 'factory = "ita_nerd"', "ita_nerd"),
    ('tag_scheme = "BIO"', 'tag_scheme = "BILUO"', "do not belong together"),
    ('tag_scheme = "BIO"', 'tag_scheme = "IOB2"', "IOB2"),
])
def test_config_naming_unknown_or_wrong_parts_is_a_clear_error(copy, old, new, expected):
    _edit_config(copy, old, new)
    excinfo = load_error(copy)
    assert re.search(expected, str(excinfo.value)), str(excinfo.value)[:500]


def _set_labels(path: Path, labels):
    cfg = srsly.read_json(path / "ita_ner" / "cfg")
    cfg["labels"] = labels
    srsly.write_json(path / "ita_ner" / "cfg", cfg)


@pytest.mark.parametrize("labels", [["LOC", "ORG"], ["LOC", "ORG", "PER", "MISC"], []],
                         ids=["fewer", "more", "none"])
def test_labels_of_another_size_than_the_weights(copy, labels):
    _set_labels(copy, labels)
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, ValueError)
    assert "do not belong together" in str(excinfo.value)


@pytest.mark.parametrize("labels", [["LOC", "ORG", "MISC"], ["PER", "ORG", "LOC"]],
                         ids=["renamed", "reordered"])
def test_labels_renamed_or_reordered_are_refused(copy, labels):
    _set_labels(copy, labels)
    excinfo = load_error(copy)
    assert isinstance(excinfo.value, ValueError)
    assert "do not belong together" in str(excinfo.value)


# --- no unpickling of untrusted files -----------------------------------------

def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (f"{func.value.id}.{func.attr}" if isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name) else getattr(func, "id", None)
                    or getattr(func, "attr", None))
            yield node, name


def _keyword(node, name):
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _is_true(value):
    return isinstance(value, ast.Constant) and value.value is True


def test_no_unsafe_deserialisation_in_the_package():
    """torch.load only with weights_only=True; no pickle/dill/joblib/marshal/
    shelve loads, numpy.load with allow_pickle, or trust_remote_code=True."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    problems, torch_loads = [], 0
    forbidden_modules = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
    for source in sources:
        text = source.read_text(encoding="utf8")
        tree = ast.parse(text, filename=str(source))
        where = lambda node: f"{source.relative_to(PACKAGE.parent)}:{node.lineno}"  # noqa
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names]
                module = getattr(node, "module", None)
                if {module, *names} & forbidden_modules:
                    problems.append(f"{where(node)}: imports {module or names}")
        for node, name in _calls(tree):
            if name in ("torch.load", "load") and isinstance(node.func, ast.Attribute) \
                    and getattr(node.func.value, "id", None) == "torch":
                torch_loads += 1
                if not _is_true(_keyword(node, "weights_only")):
                    problems.append(f"{where(node)}: torch.load without weights_only=True")
            if name in ("numpy.load", "np.load") and _is_true(_keyword(node, "allow_pickle")):
                problems.append(f"{where(node)}: numpy.load(allow_pickle=True)")
            if _is_true(_keyword(node, "trust_remote_code")):
                problems.append(f"{where(node)}: trust_remote_code=True")
        if re.search(r"\btorch\.load\b(?!\()", text):
            problems.append(f"{source}: torch.load passed around as a function")
    assert torch_loads >= 2  # the tagger's weights and EfficientNet's
    assert problems == []


def test_the_scan_catches_what_it_looks_for(tmp_path):
    """The AST scan itself: a file with each forbidden call is flagged."""
    code = ("import torch, pickle\n"
            "torch.load(f)\n"
            "torch.load(f, weights_only=False)\n"
            "torch.load(f, weights_only=True)\n")
    tree = ast.parse(code)
    flagged = [node.lineno for node, name in _calls(tree) if name == "torch.load"
               and not _is_true(_keyword(node, "weights_only"))]
    assert flagged == [2, 3]
