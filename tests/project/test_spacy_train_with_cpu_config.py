"""The project's CPU config trains with the stock `spacy train`: an MNER sample
converted with `spacy_ita convert`, trained, and scored with `spacy_ita evaluate`."""
import subprocess
import sys

import spacy
import srsly

from helpers import cpu_config_with, write_mner_sample


def run(*args, cwd=None):
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_spacy_train_with_the_cpu_config(tmp_path, tiny_encoder):
    sample, captions = write_mner_sample(tmp_path)
    corpus = tmp_path / "sample.spacy"
    run("spacy_ita", "convert", str(sample), str(corpus), "--captions", str(captions))
    # The config's encoder is the bundled MiniLM; a tiny random one keeps this fast.
    (tmp_path / "config.cfg").write_text(cpu_config_with(tiny_encoder), encoding="utf8")
    output = tmp_path / "output"
    run("spacy", "train", str(tmp_path / "config.cfg"), "--output", str(output),
        "--paths.train", str(corpus), "--paths.dev", str(corpus),
        "--training.max_steps", "4", "--training.eval_frequency", "2")
    nlp = spacy.load(output / "model-best")
    assert nlp.pipe_names == ["ita_ner"]
    assert nlp.config["components"]["ita_ner"]["model"]["name"] == tiny_encoder
    assert set(nlp.get_pipe("ita_ner").labels) == {"ORG", "LOC", "PER"}
    metrics = run("spacy_ita", "evaluate", str(output / "model-last"), str(corpus),
                  "--output", str(tmp_path / "metrics.json"))
    assert "cross" in metrics.stdout and "text" in metrics.stdout
    scores = srsly.read_json(tmp_path / "metrics.json")["views"]
    assert set(scores) == {"cross", "text"}
    assert scores["cross"]["n_gold_entities"] == 5
