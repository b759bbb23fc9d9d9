"""`spacy train` with the repo's CPU config, end to end on a small converted sample."""
import subprocess
import sys

import spacy
import srsly

from conftest import REPO_ROOT

CONFIG = REPO_ROOT / "project" / "configs" / "ita.cfg"

SAMPLE = """IMGID:1
Phoenix\tB-ORG
beat\tO
Denver\tB-ORG

IMGID:2
Sunset\tO
over\tO
Phoenix\tB-LOC

IMGID:3
Jordan\tB-PER
scores\tO
again\tO

IMGID:4
Rain\tO
in\tO
New\tB-LOC
York\tI-LOC
"""
CAPTIONS = "1.jpg :basketball players on court\n2.jpg :a desert city at dusk\n4.jpg :a wet street\n"


def run(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_spacy_train_with_the_cpu_config(tmp_path, tiny_encoder):
    (tmp_path / "sample.txt").write_text(SAMPLE, encoding="utf8")
    (tmp_path / "captions.txt").write_text(CAPTIONS, encoding="utf8")
    corpus = tmp_path / "sample.spacy"
    run("spacy_ita", "convert", str(tmp_path / "sample.txt"), str(corpus),
        "--captions", str(tmp_path / "captions.txt"))
    # The config's encoder is the bundled MiniLM; a tiny random one keeps this fast.
    config = CONFIG.read_text(encoding="utf8").replace(
        '[components.ita_ner.model.name]\n@misc = "spacy-ita.bundled_encoder.v1"\n', ""
    ).replace('@architectures = "spacy-ita.ItaTagger.v1"\n',
              f'@architectures = "spacy-ita.ItaTagger.v1"\nname = "{tiny_encoder}"\n')
    (tmp_path / "config.cfg").write_text(config, encoding="utf8")
    output = tmp_path / "output"
    run("spacy", "train", str(tmp_path / "config.cfg"), "--output", str(output),
        "--paths.train", str(corpus), "--paths.dev", str(corpus),
        "--training.max_steps", "4", "--training.eval_frequency", "2")
    nlp = spacy.load(output / "model-best")
    assert nlp.pipe_names == ["ita_ner"]
    assert set(nlp.get_pipe("ita_ner").labels) == {"ORG", "LOC", "PER"}
    metrics = run("spacy_ita", "evaluate", str(output / "model-last"), str(corpus),
                  "--output", str(tmp_path / "metrics.json"))
    assert "cross" in metrics.stdout and "text" in metrics.stdout
    scores = srsly.read_json(tmp_path / "metrics.json")["views"]
    assert set(scores) == {"cross", "text"}
    assert scores["cross"]["n_gold_entities"] == 5
