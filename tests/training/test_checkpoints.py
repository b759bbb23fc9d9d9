"""`spacy_ita.training.checkpoints` on its own: the state it stores (random generators,
optimizer moments by stable names, fingerprints), why it refuses to resume,
and the save it makes when a training loop ends. Whole training runs that
resume from it are in test_training_loop.py."""
import random

import numpy
import pytest
import srsly
import torch
from spacy import util
from spacy.training.loop import create_before_to_disk_callback
from thinc.api import Adam

from helpers import CPU_CONFIG, make_examples, make_nlp
from spacy_ita.training.checkpoints import (CannotResume, Checkpoints, DamagedCheckpoint,
                                            Progress, checkpoint_link, decode_random_states,
                                            encode_random_states, fingerprint, get_optimizer_state,
                                            random_states, set_optimizer_state, set_random_states)

LIMITS = {"max_steps": 0, "max_epochs": 0, "batch_size_schedule": False}
KEEP = create_before_to_disk_callback(None)


def draws():
    return (random.random(), float(numpy.random.rand()), float(torch.rand(1)))


def test_random_states_come_back_from_msgpack():
    states = random_states()
    stored = srsly.msgpack_loads(srsly.msgpack_dumps(encode_random_states(states)))
    expected = draws()
    set_random_states(decode_random_states(stored))
    assert draws() == expected


@pytest.fixture
def trained(tiny_encoder):
    """A tiny pipeline after one Adam update, and its optimizer."""
    nlp = make_nlp(tiny_encoder)
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.001)
    nlp.update(examples, sgd=optimizer)
    return nlp, optimizer


def test_optimizer_state_moves_to_a_second_pipeline_by_stable_names(trained, tiny_encoder):
    """Parameters are named by pipe and position, not by thinc's ids, which
    differ in every process, as they do for a second pipeline here."""
    nlp, optimizer = trained
    state = get_optimizer_state(nlp, optimizer)
    assert state["entries"] and all(entry["nr_update"] == 1 for entry in state["entries"])
    other = make_nlp(tiny_encoder)
    other.initialize(lambda: make_examples(other))
    other_optimizer = Adam(0.001)
    set_optimizer_state(other, other_optimizer, state)
    restored = get_optimizer_state(other, other_optimizer)
    assert [entry["name"] for entry in restored["entries"]] == \
        [entry["name"] for entry in state["entries"]]
    for ours, theirs in zip(state["entries"], restored["entries"]):
        assert numpy.array_equal(ours["mom1"], theirs["mom1"]), ours["name"]
        assert numpy.array_equal(ours["mom2"], theirs["mom2"]), ours["name"]


def test_optimizer_state_for_a_parameter_the_pipeline_lacks_is_refused(trained):
    nlp, optimizer = trained
    state = get_optimizer_state(nlp, optimizer)
    state["entries"][0]["name"] = ["tagger", 0, -1, "W"]
    with pytest.raises(ValueError, match=r"names a parameter \('tagger', 0, -1, 'W'\)"):
        set_optimizer_state(nlp, optimizer, state)


def test_fingerprint_ignores_how_long_a_run_goes_but_not_what_it_learns(tiny_encoder):
    config = util.load_config(CPU_CONFIG)
    base = fingerprint(config, None)
    assert base["data"] is None  # a streamed corpus
    assert set(base["versions"]) >= {"spacy-ita", "spacy", "torch"}
    longer = config.copy()
    longer["training"]["max_steps"] = 5000
    longer["training"]["patience"] = 7
    assert fingerprint(longer, None)["config"] == base["config"]
    other = config.copy()
    other["training"]["dropout"] = 0.3
    assert fingerprint(other, None)["config"] != base["config"]
    nlp = make_nlp(tiny_encoder)
    examples = make_examples(nlp)
    data = fingerprint(config, examples)["data"]
    assert data == fingerprint(config, make_examples(nlp))["data"]
    examples[0].predicted._.visual_context = None
    assert fingerprint(config, examples)["data"] != data


def test_restore_finds_nothing_or_says_why_it_cannot_resume(trained, tmp_path):
    nlp, optimizer = trained
    store = Checkpoints(tmp_path, {"config": "c", "data": "d", "versions": "v"})
    assert store.restore(nlp, optimizer, LIMITS) is None
    nlp.to_disk(store.last)  # as `spacy train` saves it: no link to a state
    with pytest.raises(CannotResume, match="was not saved at a resumable point"):
        store.restore(nlp, optimizer, LIMITS)


def test_a_checkpoint_that_does_not_load_cannot_be_resumed(trained, tmp_path):
    nlp, optimizer = trained
    store = Checkpoints(tmp_path, {"config": "c", "data": "d", "versions": "v"})
    store.save(nlp, optimizer, Progress(run="r", step=3), random_states(), False, KEEP)
    (store.last / "ita_ner" / "model").unlink()
    with pytest.raises(DamagedCheckpoint, match=rf"^{store.last} or its training state cannot be "
                                           r"loaded \(FileNotFoundError: .*ita_ner/model"):
        store.restore(nlp, optimizer, LIMITS)


def test_a_saved_checkpoint_resumes_only_with_the_same_fingerprint(trained, tmp_path):
    nlp, optimizer = trained
    prints = {"config": "c", "data": "d", "versions": "v"}
    store = Checkpoints(tmp_path, prints)
    store.save(nlp, optimizer, Progress(run="r", step=3, results=[(0.5, 3)]), random_states(),
               True, KEEP)
    assert checkpoint_link(store.last) == {"run": "r", "step": 3, "epoch": 0}
    assert checkpoint_link(store.best)["step"] == 3
    progress, _ = store.restore(nlp, optimizer, LIMITS)
    assert (progress.run, progress.step, progress.results) == ("r", 3, [(0.5, 3)])
    changed = Checkpoints(tmp_path, {**prints, "data": "other"})
    with pytest.raises(CannotResume, match="^the training data differs"):
        changed.restore(nlp, optimizer, LIMITS)


def test_final_save_records_the_resume_point_and_nothing_mid_update(trained, tmp_path):
    nlp, optimizer = trained
    warnings = []
    store = Checkpoints(tmp_path, {"config": "c", "data": "d", "versions": "v"},
                        warn=warnings.append)
    with pytest.raises(KeyError):
        with store.final_save(nlp, optimizer, Progress(run="r"), KEEP) as point:
            point.updating()
            raise KeyError("inside finish_update")
    assert warnings == ["Aborting and saving the final model. Encountered exception: "
                        "KeyError('inside finish_update')",
                        "Stopped while the weights were being updated: saved nothing"]
    assert not store.last.exists()
    with store.final_save(nlp, optimizer, Progress(run="r"), KEEP) as point:
        point.after_step(Progress(run="r", step=4))
    assert checkpoint_link(store.last) == {"run": "r", "step": 4, "epoch": 0}
    assert not store.best.exists()
