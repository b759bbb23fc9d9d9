"""The spaCy project in project/: the `all` workflow on a tiny setting, its assets
offline, and its package in a fresh process."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import pytest
import spacy
import srsly
import typer
from spacy.tokens import DocBin, Span
from spacy.util import load_config
from spacy.vocab import Vocab
from typer.testing import CliRunner
from weasel.util import load_project_config

import ablation_table
import demo_corpus
import variant_config
from error_report import entity_errors
from helpers import PROJECT, REPO_ROOT, SHARED_DATA
from spacy_ita.ner.encoders import BUNDLED_ENCODER
from try_package import make_venv

ASSETS = REPO_ROOT / "assets"
SHARED_TWITTER2015 = SHARED_DATA / "twitter2015"
WHEEL = "packages/en_ita_demo-0.1.0/dist/en_ita_demo-0.1.0-py3-none-any.whl"
# Any download attempt fails at once instead of waiting for a network.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def copy_project(target: Path) -> Path:
    """The project as a fresh clone has it: project.yml, configs, scripts, and
    next to it the repository's assets/ with the demo posts."""
    target.mkdir(parents=True)
    shutil.copy(PROJECT / "project.yml", target)
    for folder in ("configs", "scripts"):
        shutil.copytree(PROJECT / folder, target / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (target.parent / "assets" / "demo").mkdir(parents=True)
    for path in (ASSETS / "demo").glob("*.jsonl"):
        shutil.copy(path, target.parent / "assets" / "demo")
    return target


def run_script(main, *args: str):
    """A project script's command line, run in this process."""
    app = typer.Typer()
    app.command()(main)
    return CliRunner().invoke(app, list(args))


def spacy_project(project: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OFFLINE)
    return subprocess.run([sys.executable, "-m", "spacy", "project", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=timeout)


class TagBalance(HTMLParser):
    """Fails on an end tag that closes anything but the innermost open element."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "wbr", "col", "source"}

    def __init__(self):
        super().__init__()
        self.stack = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_encoder):
    """`spacy project run all` on the demo data with a tiny encoder, 5 updates and
    no OCR (EfficientNet tags still run on the images)."""
    project = copy_project(tmp_path_factory.mktemp("clone") / "project")
    result = spacy_project(
        project, "run", "all", ".", "--vars.encoder", tiny_encoder, "--vars.epochs", "0",
        "--vars.max_steps", "4", "--vars.eval_frequency", "2", "--vars.warmup_steps", "1",
        "--vars.ocr", "none", "--vars.report_limit", "3")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return project, result.stdout


def test_ita_context_factory_has_entry_point():
    """A packaged demo pipeline starts with ita_context: a bare spacy.load must find it."""
    factories = {ep.name for ep in metadata.entry_points(group="spacy_factories")}
    assert "ita_context" in factories, (
        "setup.cfg needs `ita_context = spacy_ita.context.component:make_ita_context` "
        "under spacy_factories (then reinstall: pip install -e .)")


def test_all_workflow_writes_metrics_wheel_and_report(demo_run):
    project, stdout = demo_run
    metrics = srsly.read_json(project / "metrics" / "demo" / "ita_cva.json")
    for view in ("cross", "text"):
        scores = metrics["views"][view]
        assert 0.0 <= scores["ents_f"] <= 1.0 and scores["n_docs"] == 8
        assert scores["n_gold_entities"] == 9
    with zipfile.ZipFile(project / WHEEL) as wheel:
        requires = wheel.read("en_ita_demo-0.1.0.dist-info/METADATA").decode()
        config = wheel.read("en_ita_demo/en_ita_demo-0.1.0/config.cfg").decode()
    assert "Requires-Dist: spacy-ita[vision]" in requires
    assert 'pipeline=["ita_context","ita_ner"]' in config.replace(" ", "")
    page = (project / "reports" / "demo" / "ita_cva.html").read_text(encoding="utf8")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert page.count("<section class='post") == 3
    assert page.count("data:image/png;base64,") == 3
    assert "class=\"entities\"" in page  # displaCy's markup
    parser = TagBalance()
    parser.feed(page)
    assert parser.stack == []
    assert "entities:" in stdout and "spacy.load('en_ita_demo')" in stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    """The page is self-contained: a browser with no network draws the posts,
    their images and the highlighted entities."""
    from PIL import Image

    project, _ = demo_run
    page = project / "reports" / "demo" / "ita_cva.html"
    screenshot = tmp_path / "report.png"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--proxy-server=127.0.0.1:9", f"--screenshot={screenshot}", "--window-size=1000,1400",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert screenshot.exists(), result.stderr[-2000:]
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1000, 1400)
    colours = image.getcolors(maxcolors=1_000_000)
    # Text, displaCy's entity colours and the post images: far more than a blank page.
    assert colours is not None and len(colours) > 200


def test_rerun_skips_finished_steps(demo_run):
    project, _ = demo_run
    result = spacy_project(project, "run", "corpus", ".", "--vars.ocr", "none")
    assert result.returncode == 0
    assert "Skipping 'demo-images': nothing changed" in result.stdout
    assert "Skipping 'extract-demo': nothing changed" in result.stdout


def test_ablation_compares_the_three_variants_and_skips_them_when_done(demo_run, tiny_encoder):
    project, _ = demo_run
    ablation = ("run", "ablation", ".", "--vars.encoder", tiny_encoder, "--vars.epochs", "0",
                "--vars.max_steps", "2", "--vars.eval_frequency", "2",
                "--vars.warmup_steps", "1", "--vars.ocr", "none")
    result = spacy_project(project, *ablation)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    table = (project / "metrics" / "demo" / "ablation.md").read_text(encoding="utf8")
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:5]]
    assert rows == ["| text_only", "| ita", "| ita_cva"]
    config = (project / "training" / "demo" / "text_only" / "config.cfg").read_text()
    assert "use_context = false" in config
    # the nested runs got the vars passed on: 2 steps, not the default 250
    model = spacy.load(project / "training" / "demo" / "ita" / "model-last")
    assert model.meta["spacy_ita"]["checkpoint"]["step"] == 2
    again = spacy_project(project, *ablation)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    for step in ("ablation-text_only", "ablation-ita", "ablation-ita_cva", "compare"):
        assert f"Skipping '{step}': nothing changed" in again.stdout


def test_package_loads_in_a_fresh_process(demo_run, tmp_path):
    """Installed into a new venv and loaded from another folder with PYTHONPATH
    unset: the package needs nothing from the repository's working tree."""
    project, _ = demo_run
    python = make_venv(tmp_path / "venv")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(OFFLINE)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(project / WHEEL)], check=True, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    image = project / "corpus" / "demo" / "images" / "jordan_citadel.png"
    code = (
        "import json, sys, spacy\n"
        "nlp = spacy.load('en_ita_demo')\n"
        "doc = nlp.make_doc('Jordan from the top of the citadel')\n"
        f"doc._.image = {str(image)!r}\n"
        "doc = nlp(doc)\n"
        "print(json.dumps({'path': sys.path, 'file': spacy.util.get_package_path("
        "'en_ita_demo').as_posix(), 'pipes': nlp.pipe_names,\n"
        "  'tags': doc._.visual_context.object_tags}))\n"
    )
    result = subprocess.run([str(python), "-c", code], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["pipes"] == ["ita_context", "ita_ner"]
    assert loaded["file"].startswith((tmp_path / "venv").as_posix())
    assert loaded["tags"]  # EfficientNet tags from the image
    assert not any(Path(entry) in (REPO_ROOT, PROJECT) for entry in loaded["path"] if entry)


@pytest.mark.data
@pytest.mark.skipif(not SHARED_TWITTER2015.is_dir(), reason="needs ../shared/data/twitter2015")
def test_assets_in_place_are_verified_not_downloaded(tmp_path):
    project = copy_project(tmp_path / "project")
    target = project / "assets" / "twitter2015"
    target.mkdir(parents=True)
    for path in SHARED_TWITTER2015.glob("*.txt"):
        shutil.copyfile(path, target / path.name)
    result = spacy_project(project, "assets", ".")
    # The four release files copied in are verified; the one asset not copied
    # in, PGIM's zip, is the only download tried (and, offline, it fails).
    assert result.stdout.count("Skipping download with matching checksum") == 4
    assert "data_PGIM/2015.zip" in result.stdout + result.stderr

    wrong = target / "valid.txt"
    wrong.write_text("IMGID:1\nNot\tO\nthe\tO\nrelease\tO\n\n", encoding="utf8")
    result = spacy_project(project, "assets", ".")
    output = " ".join(result.stdout.split())  # wasabi wraps long lines
    assert "Checksum doesn't match value defined in project.yml" in output
    assert "assets/twitter2015/valid.txt" in output
    assert wrong.read_text(encoding="utf8").startswith("IMGID:1\nNot")  # left as it was
    assert output.count("Skipping download with matching checksum") == 3


def write_twitter_dataset(folder: Path, n_posts: int = 10) -> None:
    """A twitter2017-like asset folder made here: UMT splits of `n_posts` posts,
    their BLIP-2 captions and PGIM's knowledge keyed by image id."""
    folder.mkdir(parents=True)
    captions, knowledge = [], []
    for digit, split in enumerate(("train", "valid", "test"), start=1):
        posts = []
        for i in range(n_posts):
            image = f"{digit}{i:02d}"
            posts.append(f"IMGID:{image}\nKawhi\tB-PER\nwins\tO\nin\tO\nOslo\tB-LOC\n"
                         f"tonight\tO\n\n")
            captions.append(f"{image}.jpg :a player on a court\n")
            knowledge.append(f"{image}.jpg :Named entities:1. Kawhi (person/player)"
                             f"2. Oslo (city)Reasoning:a game.\n")
        (folder / f"{split}.txt").write_text("".join(posts), encoding="utf8")
    (folder / "blip2_captions.txt").write_text("".join(captions), encoding="utf8")
    (folder / "pgim_knowledge.txt").write_text("".join(knowledge), encoding="utf8")


def test_twitter_corpus_augments_the_training_knowledge_only(tmp_path):
    """`corpus` on a Twitter dataset converts the release, then varies the
    training posts' knowledge (the recipe) or, with train_knowledge released,
    copies it; dev and test are PGIM's either way."""
    project = copy_project(tmp_path / "project")
    write_twitter_dataset(project / "assets" / "twitter2017")
    result = spacy_project(project, "run", "corpus", ".", "--vars.dataset", "twitter2017")
    assert result.returncode == 0, result.stdout + result.stderr
    corpus, released = project / "corpus" / "twitter2017", project / "corpus" / "twitter2017" / "released"
    for split in ("dev", "test"):
        assert (corpus / f"{split}.spacy").read_bytes() == (released / f"{split}.spacy").read_bytes()
    vocab = Vocab()
    augmented = list(DocBin().from_disk(corpus / "train.spacy").get_docs(vocab))
    as_released = list(DocBin().from_disk(released / "train.spacy").get_docs(vocab))
    assert [doc.text for doc in augmented] == [doc.text for doc in as_released]
    changed = [a._.visual_context.knowledge != r._.visual_context.knowledge
               for a, r in zip(augmented, as_released)]
    assert 0 < sum(changed) < len(changed)  # a fifth of the posts keep PGIM's answer
    assert srsly.read_json(corpus / "augmentation.json")["knowledge"] == "augmented"

    result = spacy_project(project, "run", "corpus", ".", "--vars.dataset", "twitter2017",
                           "--vars.train_knowledge", "released")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (corpus / "train.spacy").read_bytes() == (released / "train.spacy").read_bytes()


def test_demo_images_are_deterministic_and_entities_resolve(tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    srsly.write_jsonl(recipes / "train.jsonl", [
        {"id": "sign", "text": "Jordan or Jordan ?",
         "entities": [["Jordan", "LOC"], ["Jordan", "PER"]],
         "image": {"kind": "sign", "lines": ["WELCOME TO", "JORDAN"]}},
        {"id": "cat", "text": "Chelsea again", "entities": [["Chelsea", "PER"]],
         "image": {"kind": "photo", "photo": "chelsea", "lines": ["MY CAT"]}},
    ])
    drawn = []
    for run in ("a", "b"):
        result = run_script(demo_corpus.main, str(recipes), str(tmp_path / run / "gold"),
                            "--image-dir", str(tmp_path / run / "images"))
        assert result.exit_code == 0, result.output
        drawn.append([(tmp_path / run / "images" / f"{name}.png").read_bytes()
                      for name in ("sign", "cat")])
    assert drawn[0] == drawn[1]
    docs = list(DocBin().from_disk(tmp_path / "a" / "gold" / "train.spacy").get_docs(Vocab()))
    assert [(e.start_char, e.end_char, e.label_) for e in docs[0].ents] == \
        [(0, 6, "LOC"), (10, 16, "PER")]
    assert Path(docs[0]._.image) == tmp_path / "a" / "images" / "sign.png"
    assert [doc._.image_id for doc in docs] == ["sign", "cat"]

    srsly.write_jsonl(recipes / "train.jsonl", [
        {"id": "food", "text": "Jordanian food", "entities": [["Jordan", "LOC"]],
         "image": {"kind": "logo", "lines": ["FOOD"]}}])
    result = run_script(demo_corpus.main, str(recipes), str(tmp_path / "c"),
                        "--image-dir", str(tmp_path / "c"))
    assert result.exit_code == 1
    assert f"{recipes / 'train.jsonl'}, line 1: entity 'Jordan' (0-6) does not start and " \
        "end on token boundaries" in " ".join(result.output.split())


@pytest.mark.parametrize("post, message", [
    ({"id": "../escaped"}, "id '../escaped' names the image file"),
    ({"entities": [["Rome", "LOC", "x"]]}, "'entities' must be a list of [surface, label]"),
    ({"entities": [[7, "LOC"]]}, "'entities' must be a list of [surface, label]"),
    ({"image": {"kind": "photo"}}, "a photo recipe needs 'photo', one of"),
    ({"image": {"kind": "photo", "photo": "download_all"}}, "a photo recipe needs 'photo'"),
    ({"image": {"kind": "mural"}}, "unknown image kind 'mural'"),
    ({"image": {"kind": "sign", "lines": "Paris"}}, "the image recipe's 'lines' must be a list of strings"),
    ({"image": {"kind": "sign", "lines": ["ROMA\nNOTTE"]}},
     "the image recipe's 'lines' must be a list of strings without line breaks"),
    ({"image": {"kind": "photo", "photo": ["cat"]}}, "a photo recipe needs 'photo', one of"),
    ({"image": {"kind": "sign", "background": {"r": 1}}},
     "the image recipe's 'background' must be a colour name or code, got {'r': 1}"),
    ({"image": {"kind": "sign", "foreground": "notacolour"}},
     "the image recipe's 'foreground' must be a colour name or code, got 'notacolour'"),
    ({"id": "b", "text": "Romeo"},
     "entity 'Rome' (0-4) does not start and end on token boundaries"),
    ({}, "id 'a' is used already"),
])
def test_a_bad_recipe_is_refused_naming_its_line_and_draws_nothing_outside(tmp_path, post,
                                                                        message):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    first = {"id": "a", "text": "Rome at night", "entities": [["Rome", "LOC"]],
             "image": {"kind": "sign", "lines": ["ROMA"]}}
    (recipes / "train.jsonl").write_bytes(  # a BOM is read as apply reads one; blank lines count
        b"\xef\xbb\xbf" + srsly.json_dumps(first).encode() + b"\n\n"
        + srsly.json_dumps({**first, **post}).encode() + b"\n")
    result = run_script(demo_corpus.main, str(recipes), str(tmp_path / "gold"),
                        "--image-dir", str(tmp_path / "images"))
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert f"{recipes / 'train.jsonl'}, line 3: {message}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "recipes"]


def test_entity_errors_and_comparison_table():
    nlp = spacy.blank("en")
    gold, pred = nlp("Jordan met Pippen in Chicago"), nlp("Jordan met Pippen in Chicago")
    gold.ents = [Span(gold, 0, 1, "PER"), Span(gold, 2, 3, "PER"), Span(gold, 4, 5, "LOC")]
    pred.ents = [Span(pred, 0, 1, "LOC"), Span(pred, 3, 4, "ORG"), Span(pred, 4, 5, "LOC")]
    errors = entity_errors(gold, pred)
    assert errors == {"missed": [((11, 17, "PER"), None)], "spurious": [((18, 20, "ORG"), None)],
                      "wrong type": [((0, 6, "LOC"), "PER")]}
    scores = {"ents_p": 0.5, "ents_r": 0.25, "ents_f": 1 / 3,
              "ents_per_type": {"PER": {"p": 1.0, "r": 0.5, "f": 2 / 3}}}
    table = ablation_table.comparison_table({"text_only": {"views": {"cross": scores, "text": scores}},
                              "ita_cva": {"views": {"cross": scores}}})
    lines = table.splitlines()
    assert lines[0] == ("| variant | cross-modal P | cross-modal R | cross-modal F1 "
                        "| text-only P | text-only R | text-only F1 |")
    assert lines[2] == "| text_only | 50.00 | 25.00 | 33.33 | 50.00 | 25.00 | 33.33 |"
    assert lines[3] == "| ita_cva | 50.00 | 25.00 | 33.33 | – | – | – |"
    assert "| ita_cva | cross-modal | 66.67 |" in table


def train_schedule(project: Path, **var_overrides) -> tuple:
    """The schedule `spacy project run train` writes into the run's config, for
    the project's vars with `var_overrides`: (epochs, max_steps, eval_frequency,
    warmup_steps, total_steps)."""
    overrides = {f"vars.{name}": value for name, value in var_overrides.items()}
    commands = load_project_config(project, overrides=overrides)["commands"]
    script = next(command for command in commands if command["name"] == "train")["script"]
    _, program, *args = script[0].split()
    assert program == "scripts/variant_config.py"
    result = run_script(variant_config.main, *args)
    assert result.exit_code == 0, result.output
    training = load_config(args[1], interpolate=False)["training"]
    rate = training["optimizer"]["learn_rate"]
    return (training["max_epochs"], training["max_steps"], training["eval_frequency"],
            rate["warmup_steps"], rate["total_steps"])


def test_each_dataset_trains_on_its_schedule_unless_a_var_sets_it(tmp_path, monkeypatch):
    """A plain run on the demo takes its short run (51 updates on 36 posts, scored
    at update 50), the Twitter datasets the CPU recipe; a schedule var replaces
    its part for any dataset."""
    project = copy_project(tmp_path / "project")
    monkeypatch.chdir(project)
    assert train_schedule(project) == (17, 250, 50, 25, 250)
    assert train_schedule(project, dataset="twitter2015") == (100, 500, 100, 50, 500)
    assert train_schedule(project, dataset="twitter2017", max_steps=1000, epochs=0) == \
        (0, 1000, 100, 50, 1000)
    assert train_schedule(project, warmup_steps=5) == (17, 250, 50, 5, 250)
    result = run_script(variant_config.main, "configs/ita.cfg", "out.cfg", "--dataset", "demo",
                        "--eval-frequency", "often")
    assert result.exit_code == 1
    assert "--eval-frequency 'often': expected a whole number or 'auto'" in \
        " ".join(result.output.split())  # wasabi wraps long lines
    result = run_script(variant_config.main, "configs/ita.cfg", "out.cfg", "--dataset", "mnist")
    assert result.exit_code == 1
    assert "Unknown dataset 'mnist'; choose from demo, twitter2015, twitter2017" in \
        " ".join(result.output.split())
    assert not (project / "out.cfg").exists()


def test_variant_configs_differ_only_in_the_variant(tmp_path):
    configs = {}
    for variant in ("text_only", "ita", "ita_cva"):
        out = tmp_path / f"{variant}.cfg"
        result = run_script(variant_config.main, str(PROJECT / "configs" / "ita.cfg"), str(out),
                            "--variant", variant)
        assert result.exit_code == 0, result.output
        assert "${paths.train}" in out.read_text()
        configs[variant] = load_config(out, interpolate=False)["components"]["ita_ner"]
    assert configs["text_only"]["use_context"] is False
    assert configs["ita"]["loss"]["cva_weight"] == 0 and configs["ita"]["loss"]["text_weight"] == 0
    assert configs["ita_cva"]["loss"]["cva_weight"] > 0 and configs["ita_cva"]["use_context"]
    assert configs["ita_cva"]["model"]["name"] == {"@misc": BUNDLED_ENCODER}
    assert variant_config.variant_overrides("ita", "xlm-roberta-large")[
        "components.ita_ner.model.name"] == "xlm-roberta-large"
    result = run_script(variant_config.main, str(PROJECT / "configs" / "ita_gpu.cfg"),
                        str(tmp_path / "z.cfg"))
    config = load_config(tmp_path / "z.cfg", interpolate=False)
    assert config["components"]["ita_ner"]["model"]["name"] == {"@misc": BUNDLED_ENCODER}
    result = run_script(variant_config.main, str(PROJECT / "configs" / "ita.cfg"),
                        str(tmp_path / "y.cfg"), "--variant", "nope")
    assert result.exit_code == 1
    assert "Unknown variant 'nope'; choose from text_only, ita, ita_cva" in result.output
    assert not (tmp_path / "y.cfg").exists()
