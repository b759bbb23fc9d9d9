"""Issue 18: loading a pipeline folder is reading data. A crafted `ita_ner/model`
can neither write files nor name other files or code to load, and an untrained
ita_ner saves and loads like every spaCy pipe.
"""
import ast
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import spacy
import srsly
from thinc.api import Config

from helpers import check_tagged, make_examples, make_nlp
from spacy_ita.ner.encoders import MPNET_ENCODER


@pytest.fixture(scope="module")
def saved(tiny_encoder, tmp_path_factory):
    """An initialised (untrained) ita_ner pipeline on disk."""
    nlp = make_nlp(tiny_encoder)
    nlp.initialize(lambda: make_examples(nlp))
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    nlp.to_disk(path)
    return path


def edit_module_blob(pipeline: Path, edit) -> None:
    """Rewrite the torch module's blob inside `ita_ner/model` (thinc's model
    msgpack > the shim's {"config", "state"} > serialize_module's dict)."""
    model = pipeline / "ita_ner" / "model"
    msg = srsly.msgpack_loads(model.read_bytes())
    (node,) = [i for i, shims in enumerate(msg["shims"]) if shims]
    shim = srsly.msgpack_loads(msg["shims"][node][0])
    module = srsly.msgpack_loads(shim["state"])
    edit(module)
    shim["state"] = srsly.msgpack_dumps(module)
    msg["shims"][node][0] = srsly.msgpack_dumps(shim)
    model.write_bytes(srsly.msgpack_dumps(msg))


def set_setting(module, part: str, key: str, value) -> None:
    """Set `key` in the encoder config or in one of the tokenizer's JSON files."""
    if part == "encoder_config":
        module[part][key] = value
    else:
        config = json.loads(module["tokenizer"][part])
        config[key] = value
        module["tokenizer"][part] = json.dumps(config).encode("utf8")


def files_under(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def sandbox(saved, tmp_path, monkeypatch):
    """A copy of the pipeline in a fresh folder that is also the working
    directory and holds the temporary folder, so every relative or absolute
    name a crafted file can aim at lands where `files_under` sees it."""
    shutil.copytree(saved, tmp_path / "pipeline")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_untouched_copy_loads(sandbox):
    before = files_under(sandbox)
    check_tagged(spacy.load(sandbox / "pipeline")("Messi joins Miami"), "Messi joins Miami")
    assert files_under(sandbox) == before


@pytest.mark.parametrize("entry", [
    "../evil.txt", "../../evil.txt", "{sandbox}/abs.txt", "sub/dir.json", "..", "",
    "vocab.txt/", "notes.txt", "tokenizer_config.json\x00.txt",
], ids=["parent", "grandparent", "absolute", "subfolder", "dotdot", "empty",
        "trailing_slash", "unexpected_name", "nul"])
def test_a_tokenizer_entry_that_is_not_a_tokenizer_file_name_is_refused(sandbox, entry):
    entry = entry.format(sandbox=sandbox)
    edit_module_blob(sandbox / "pipeline",
                     lambda module: module["tokenizer"].__setitem__(entry, b"written"))
    before = files_under(sandbox)
    with pytest.raises(ValueError) as excinfo:
        spacy.load(sandbox / "pipeline")
    message = str(excinfo.value)
    assert "ita_ner" in message and str(sandbox / "pipeline" / "ita_ner") in message
    assert repr(entry) in message, message
    assert files_under(sandbox) == before


@pytest.mark.parametrize("part,key,value", [
    ("tokenizer_config.json", "vocab_file", "/etc/passwd"),
    ("tokenizer_config.json", "fast_tokenizer_files", ["tokenizer.0.0.json"]),
    ("encoder_config", "use_pretrained_backbone", True),
])
def test_a_config_that_names_other_files_is_refused(sandbox, part, key, value):
    """Transformers would read a `*_file` key's path or load a pretrained
    backbone from elsewhere: neither may come from a pipeline folder."""
    edit_module_blob(sandbox / "pipeline", lambda module: set_setting(module, part, key, value))
    before = files_under(sandbox)
    with pytest.raises(ValueError) as excinfo:
        spacy.load(sandbox / "pipeline")
    assert repr(key) in str(excinfo.value) and "ita_ner" in str(excinfo.value)
    assert files_under(sandbox) == before


@pytest.mark.parametrize("file,content,key", [
    ("special_tokens_map.json", {"vocab_file": "{secret}"}, "vocab_file"),
    ("special_tokens_map.json", {"unk_token": "[UNK]", "tokenizer_file": "{secret}"},
     "tokenizer_file"),
    ("special_tokens_map.json", {"pad_token": {"content": "[PAD]", "vocab_file": "{secret}"}},
     "pad_token"),
    ("special_tokens_map.json", {"additional_special_tokens": ["[E]", ["{secret}"]]},
     "additional_special_tokens"),
    ("added_tokens.json", {"[E]": "{secret}"}, "added_tokens.json"),
], ids=["vocab_file", "tokenizer_file", "token_object", "token_list", "added_tokens"])
def test_a_tokenizer_json_file_cannot_set_other_tokenizer_arguments(
        sandbox, monkeypatch, file, content, key):
    """Without `added_tokens_decoder` in tokenizer_config.json, transformers
    copies every key of special_tokens_map.json into the tokenizer's
    arguments: only special tokens may be there, or `vocab_file` would read
    any file. Such a pipeline is refused, and the file is never opened."""
    secret = sandbox / "secret.txt"
    secret.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nsecretpassword\n")

    def craft(module):
        config = json.loads(module["tokenizer"]["tokenizer_config.json"])
        config.pop("added_tokens_decoder", None)
        module["tokenizer"]["tokenizer_config.json"] = json.dumps(config).encode("utf8")
        crafted = json.dumps(content).replace("{secret}", str(secret))
        module["tokenizer"][file] = crafted.encode("utf8")

    edit_module_blob(sandbox / "pipeline", craft)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda name, *args, **kwargs: (
        opened.append(str(name)), real_open(name, *args, **kwargs))[1])
    with pytest.raises(ValueError) as excinfo:
        spacy.load(sandbox / "pipeline")
    message = str(excinfo.value)
    assert str(sandbox / "pipeline" / "ita_ner") in message and file in message, message
    assert repr(key) in message or key == file, message
    assert str(secret) not in opened


def test_code_that_a_config_names_never_runs(sandbox):
    """An `auto_map` naming custom classes is ignored: transformers builds its
    own classes for the model type, and imports nothing."""
    def set_auto_map(module):
        set_setting(module, "encoder_config", "auto_map",
                    {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
        set_setting(module, "tokenizer_config.json", "auto_map",
                    {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizerFast"]})

    edit_module_blob(sandbox / "pipeline", set_auto_map)
    nlp = spacy.load(sandbox / "pipeline")
    module = nlp.get_pipe("ita_ner").model.module
    for part in (module.encoder, module.encoder.config, module.tokenizer):
        assert type(part).__module__.startswith("transformers.models.bert."), type(part)
    assert not any("evil" in name for name in sys.modules)


@pytest.mark.parametrize("setting", ["tokenizer_config", "transformer_config"])
def test_a_training_config_cannot_ask_for_remote_code(tiny_encoder, setting):
    """initialize loads the encoder with trust_remote_code=False; a config that
    sets it is refused by name rather than passed on (or clashing)."""
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ita_ner", config={"model": {
        "@architectures": "spacy-ita.ItaTagger.v2", "name": tiny_encoder,
        setting: {"trust_remote_code": True}}})
    with pytest.raises(ValueError, match=f"{setting}.*trust_remote_code"):
        ner.initialize(lambda: [], labels=["PER"])
    assert not ner.model.is_initialized


def test_a_config_that_names_the_mpnet_encoder_loads_without_assembling_it(sandbox):
    """The weights are in the pipeline: spacy.load neither needs the encoder's
    five packages nor unzips it into the cache folder the config names."""
    path = sandbox / "pipeline" / "config.cfg"
    config = Config().from_disk(path, interpolate=False)
    config["components"]["ita_ner"]["model"]["name"] = {
        "@misc": MPNET_ENCODER, "cache_dir": str(sandbox / "cache")}
    config.to_disk(path)
    before = files_under(sandbox)
    check_tagged(spacy.load(sandbox / "pipeline")("Messi joins Miami"), "Messi joins Miami")
    assert files_under(sandbox) == before


def test_a_tokenizer_entry_that_is_not_bytes_is_refused(sandbox):
    edit_module_blob(sandbox / "pipeline",
                     lambda module: module["tokenizer"].__setitem__("vocab.txt", ["a", "b"]))
    with pytest.raises(ValueError, match="vocab.txt"):
        spacy.load(sandbox / "pipeline")


# --- an untrained ita_ner -----------------------------------------------------

def test_an_untrained_ita_ner_saves_loads_and_can_then_be_trained(tiny_encoder, tmp_path):
    nlp = make_nlp(tiny_encoder)
    nlp.get_pipe("ita_ner").add_label("PER")
    nlp.to_disk(tmp_path / "untrained")
    loaded = spacy.load(tmp_path / "untrained")
    ner = loaded.get_pipe("ita_ner")
    assert not ner.model.is_initialized
    assert ner.labels == ("PER",)
    with pytest.raises(ValueError, match="not initialised"):
        loaded("Messi joins Miami")
    examples = make_examples(loaded)
    loaded.initialize(lambda: examples)
    losses = loaded.update(examples, sgd=loaded.create_optimizer())
    assert losses["ita_ner"] > 0
    check_tagged(loaded("Messi joins Miami"), "Messi joins Miami")


def test_an_untrained_ita_ner_round_trips_through_bytes(tiny_encoder):
    ner = make_nlp(tiny_encoder).get_pipe("ita_ner")
    copy = make_nlp(tiny_encoder).get_pipe("ita_ner").from_bytes(ner.to_bytes())
    assert not copy.model.is_initialized
    assert copy.model.attrs["name"] == tiny_encoder


# --- what a saved tokenizer may hold --------------------------------------------

@pytest.mark.parametrize("name", [
    "BertTokenizerFast", "RobertaTokenizerFast", "XLMRobertaTokenizerFast", "MPNetTokenizerFast",
    "DebertaV2TokenizerFast", "T5TokenizerFast", "GPT2TokenizerFast", "LlamaTokenizerFast",
    "CamembertTokenizerFast", "ElectraTokenizerFast",
])
def test_the_fixed_file_names_cover_common_tokenizers(name):
    import transformers

    from spacy_ita.ner.torch_module import TOKENIZER_FILES

    classes = [getattr(transformers, name)]
    classes += [classes[0].slow_tokenizer_class] if classes[0].slow_tokenizer_class else []
    for cls in classes:
        assert set(cls.vocab_files_names.values()) <= TOKENIZER_FILES, cls


def test_a_tokenizer_that_saves_other_files_fails_when_saved_not_when_loaded(saved, tmp_path):
    nlp = spacy.load(saved)
    tokenizer = nlp.get_pipe("ita_ner").model.module.tokenizer
    save_pretrained = tokenizer.save_pretrained

    def save_with_extra_file(folder, **kwargs):
        (Path(folder) / "weird.bin").write_bytes(b"")
        return save_pretrained(folder, **kwargs)

    tokenizer.save_pretrained = save_with_extra_file
    with pytest.raises(ValueError, match="weird.bin"):
        nlp.to_disk(tmp_path / "copy")


def test_every_transformers_loader_in_the_package_refuses_remote_code():
    """from_pretrained, from_config and pipeline calls in the modules of
    spacy_ita that use transformers pass trust_remote_code=False: transformers
    would otherwise ask at the terminal whether to run the code a model folder
    names (and wait for an answer)."""
    package = Path(__file__).resolve().parents[2] / "spacy_ita"
    loaders, problems = 0, []
    for source in sorted(package.rglob("*.py")):
        text = source.read_text(encoding="utf8")
        if "transformers" not in text:  # e.g. TrainingSettings.from_config is no loader
            continue
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in ("from_pretrained", "from_config", "pipeline"):
                loaders += 1
                value = next((k.value for k in node.keywords if k.arg == "trust_remote_code"), None)
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{source.relative_to(package.parent)}:{node.lineno}")
    assert loaders >= 4  # the tagger's config, tokenizer and model, the context pipelines
    assert problems == []
