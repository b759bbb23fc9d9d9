"""`spacy_ita.training.loop`: the same updates as `spacy train`, checkpoints swapped in
whole, a resumed run that takes up exactly the state an uninterrupted run had
at that step, the checkpoints it does not resume from (another run's: it
starts over) and those that stop it (damaged: left as they are).

A new process can round differently from the one it continues (torch's CPU
kernels depend on memory alignment), so the models at the end are compared
within DRIFT; the state at the resume point is compared bit for bit.
"""
import hashlib
import io
import shutil
from pathlib import Path
from typing import Dict, NamedTuple

import pytest
import spacy
import srsly
from spacy import util
from spacy.training.initialize import init_nlp
from spacy.training.loop import train as spacy_train

from helpers import largest_difference, training_setup
from spacy_ita.training import checkpoints, loop as training


# Rounding drift over these short runs is far below this (0 in the runs seen);
# what makes a resume right is checked exactly, at the resume point.
DRIFT = 1e-5


class Interrupt(Exception):
    """Raised from inside a training step to stand in for a crash."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_encoder):
    """The corpus and config the tests share; they only read them."""
    return training_setup(tmp_path_factory.mktemp("data"), tiny_encoder)


@pytest.fixture
def own_setup(tmp_path, tiny_encoder):
    """A corpus and config of the test's own, for the tests that change them."""
    return training_setup(tmp_path / "data", tiny_encoder)


def overrides(setup, **changes):
    values = {"paths.train": str(setup["corpus"]), "paths.dev": str(setup["corpus"]),
              "training.max_epochs": 0, "training.max_steps": 9,
              "training.eval_frequency": 3, "training.patience": 0,
              # 2 posts a batch: 2 batches an epoch, so runs stop inside epochs too
              "training.batcher.size": 2}
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def initialized(setup, **changes):
    config = util.load_config(setup["config"], overrides=overrides(setup, **changes),
                              interpolate=False)
    return init_nlp(config)


def state_digest(nlp, optimizer):
    """Weights, optimizer state and random generators, as one hash."""
    digest = hashlib.sha256()
    for node in nlp.get_pipe("ita_ner").model.walk():
        for shim in node.shims:
            for value in shim._model.state_dict().values():
                digest.update(value.detach().cpu().numpy().tobytes())
    digest.update(srsly.msgpack_dumps(checkpoints.get_optimizer_state(nlp, optimizer)))
    digest.update(srsly.msgpack_dumps(checkpoints.encode_random_states(checkpoints.random_states())))
    return digest.hexdigest()


def run(setup, output, *, resume=False, steps_seen=None, states=None, fail=None, **changes):
    """Train with spacy_ita; record each step's number (and, into `states`,
    the state digest when it starts); raise `Interrupt` from the step named by
    `fail` = (step, where), where is "update" (before the weights change) or
    "finish_update" (while they change)."""
    nlp = initialized(setup, **changes)
    ner = nlp.get_pipe("ita_ner")
    current = {"step": None, "optimizer": None}

    def before_update(nlp, args):
        current["step"] = args["step"]
        if steps_seen is not None:
            steps_seen.append(args["step"])
        if states is not None:
            states[args["step"]] = state_digest(nlp, current["optimizer"])
        if fail == (args["step"], "update"):
            raise Interrupt()

    finish_update = ner.finish_update

    def failing_finish_update(sgd):
        if fail == (current["step"], "finish_update"):
            raise Interrupt()
        finish_update(sgd)

    ner.finish_update = failing_finish_update
    resolve = util.registry.resolve

    def resolve_with_hook(config, **kwargs):
        resolved = resolve(config, **kwargs)
        if "optimizer" in resolved:  # the [training] block, not the corpora
            resolved["before_update"] = before_update
            current["optimizer"] = resolved["optimizer"]
        return resolved

    log = io.StringIO()
    util.registry.resolve = resolve_with_hook
    try:
        training.train(nlp, output, resume=resume, stdout=log)
    finally:
        util.registry.resolve = resolve
    return " ".join(log.getvalue().split())  # wasabi wraps long lines


def assert_same_parameters(path_a, path_b):
    assert largest_difference(path_a, path_b) <= DRIFT


def assert_same_checkpoints(output_a, output_b):
    """Weights, scores and losses of model-last and model-best."""
    for checkpoint in ("model-last", "model-best"):
        assert_same_parameters(output_a / checkpoint, output_b / checkpoint)
        a = spacy.load(output_a / checkpoint).meta["performance"]
        b = spacy.load(output_b / checkpoint).meta["performance"]
        assert a["ents_f"] == b["ents_f"]
        assert a["ita_ner_loss"] == pytest.approx(b["ita_ner_loss"], rel=1e-4)


class Reference(NamedTuple):
    """The module's uninterrupted run: its output, and the state digest at the
    start of each step."""

    output: Path
    states: Dict[int, str]


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Reference:
    output, states = tmp_path_factory.mktemp("reference") / "uninterrupted", {}
    run(setup, output, states=states)
    return Reference(output, states)


@pytest.fixture
def uninterrupted(reference, tmp_path):
    """A copy of the reference run's output, which the test may resume into."""
    output = tmp_path / "uninterrupted"
    shutil.copytree(reference.output, output)
    return output


def assert_refused(setup, output, reason, **changes):
    """`resume` stops with DamagedCheckpoint matching `reason`, and changes
    nothing in `output`: an earlier run's model-best is the user's."""
    def files():
        return {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}

    before = files()
    with pytest.raises(checkpoints.DamagedCheckpoint, match=reason):
        run(setup, output, resume=True, **changes)
    assert files() == before


def assert_resumed_in_the_same_state(states, reference):
    """The first step of the resumed run starts from the state the
    uninterrupted run had there, bit for bit."""
    first = min(states)
    assert states[first] == reference.states[first]


def test_the_same_updates_as_spacy_train(setup, tmp_path, uninterrupted):
    output = tmp_path / "spacy"
    output.mkdir()
    spacy_train(initialized(setup), output, stdout=io.StringIO())
    for checkpoint in ("model-last", "model-best"):
        assert_same_parameters(output / checkpoint, uninterrupted / checkpoint)
    ours = spacy.load(uninterrupted / "model-best").meta["performance"]
    assert spacy.load(output / "model-best").meta["performance"] == ours


@pytest.mark.parametrize("stop", [
    pytest.param(4, id="after-a-checkpoint"),
    # the other stopping points run in make test-all, to keep make test under 15 minutes
    pytest.param(5, id="mid-epoch", marks=pytest.mark.slow),
    pytest.param(8, id="at-an-epoch-end", marks=pytest.mark.slow)])
def test_resume_ends_with_the_uninterrupted_model(setup, tmp_path, reference, uninterrupted,
                                                   stop):
    output = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        run(setup, output, fail=(stop, "update"))
    assert spacy.load(output / "model-last").meta["spacy_ita"]["checkpoint"]["step"] == stop - 1
    steps, states = [], {}
    log = run(setup, output, resume=True, steps_seen=steps, states=states)
    assert f"Resuming after step {stop - 1}" in log
    assert steps == list(range(stop, 10))  # nothing before the interruption again
    assert_resumed_in_the_same_state(states, reference)
    assert_same_checkpoints(output, uninterrupted)
    assert sorted(path.name for path in output.iterdir()) == \
        ["model-best", "model-last", "training-state"]
    assert len(list((output / "training-state").iterdir())) == 1


@pytest.mark.slow  # about a minute: three runs; make test-all runs it
def test_resume_with_weight_averaging(setup, tmp_path):
    """model-last holds the averages; the run goes on from the raw weights."""
    averaging = {"training.optimizer.use_averages": True}
    uninterrupted, reference_states, states = tmp_path / "uninterrupted", {}, {}
    run(setup, uninterrupted, states=reference_states, **averaging)
    output = tmp_path / "interrupted"
    with pytest.raises(Interrupt):
        run(setup, output, fail=(5, "update"), **averaging)
    run(setup, output, resume=True, states=states, **averaging)
    assert states[5] == reference_states[5]
    assert_same_parameters(output / "model-last", uninterrupted / "model-last")


def test_a_crash_while_weights_change_keeps_the_last_checkpoint(setup, tmp_path, reference,
                                                                 uninterrupted):
    """Half-updated weights are not saved: model-last stays the step-3
    checkpoint with its resume point, and the resumed run ends as if never stopped."""
    output = tmp_path / "out"
    with pytest.raises(Interrupt):
        run(setup, output, fail=(5, "finish_update"))
    assert spacy.load(output / "model-last").meta["spacy_ita"]["checkpoint"]["step"] == 3
    steps, states = [], {}
    log = run(setup, output, resume=True, steps_seen=steps, states=states)
    assert "Resuming after step 3" in log
    assert steps == list(range(4, 10))
    assert_resumed_in_the_same_state(states, reference)
    assert_same_checkpoints(output, uninterrupted)


def test_a_kill_between_model_last_and_model_best_is_repaired(setup, tmp_path, uninterrupted,
                                                              monkeypatch):
    """The crash lands after model-last is swapped in at step 6, before model-best."""
    output = tmp_path / "out"
    swap = checkpoints.replace_directory

    def replace_directory(target, write):
        if target.name == "model-best":
            # (not spacy.load: building a model draws random numbers)
            link = srsly.read_json(output / "model-last" / "meta.json")["spacy_ita"]["checkpoint"]
            if link["step"] == 6:
                raise Interrupt()
        swap(target, write)

    monkeypatch.setattr(checkpoints, "replace_directory", replace_directory)
    with pytest.raises(Interrupt):
        run(setup, output)
    monkeypatch.undo()
    def best_step():
        return srsly.read_json(output / "model-best" / "meta.json")["spacy_ita"]["checkpoint"]

    assert best_step()["step"] == 3  # the older one
    # resuming a run that is done at step 6 only restores, and repairs model-best
    log = run(setup, output, resume=True, **{"training.max_steps": 6})
    assert "Training had finished after step 6" in log
    assert best_step()["step"] == 6
    assert_same_parameters(output / "model-best", output / "model-last")
    run(setup, output, resume=True)
    assert_same_checkpoints(output, uninterrupted)


@pytest.mark.parametrize("change", [{"training.dropout": 0.2},
                                    {"training.optimizer.learn_rate.initial_rate": 0.001}])
def test_resume_starts_over_when_the_config_changed(setup, tmp_path, change):
    output = tmp_path / "out"
    run(setup, output, **{"training.max_steps": 3})
    steps = []
    log = run(setup, output, resume=True, steps_seen=steps, **change)
    assert "Not resuming: the config differs" in log
    assert steps[0] == 0


def test_resume_starts_over_when_the_training_data_changed(own_setup, tmp_path):
    output = tmp_path / "out"
    run(own_setup, output, **{"training.max_steps": 3})
    docs = list(spacy.tokens.DocBin().from_disk(own_setup["corpus"]).get_docs(
        spacy.blank("en").vocab))
    spacy.tokens.DocBin(store_user_data=True, docs=docs[:-1]).to_disk(own_setup["corpus"])
    steps = []
    log = run(own_setup, output, resume=True, steps_seen=steps, **{"training.max_steps": 3})
    assert "Not resuming: the training data differs" in log
    assert steps[0] == 0


def test_resume_of_a_finished_run_trains_nothing(setup, uninterrupted):
    steps = []
    log = run(setup, uninterrupted, resume=True, steps_seen=steps)
    assert "Training had finished after step 9" in log
    assert steps == []


def test_resume_with_more_steps_trains_on(setup, tmp_path, uninterrupted):
    """max_steps is not part of the match: a finished run can be extended, and
    ends where one run of the longer length would."""
    longer = tmp_path / "longer"
    longer_states, states, steps = {}, {}, []
    run(setup, longer, states=longer_states, **{"training.max_steps": 12})
    run(setup, uninterrupted, resume=True, steps_seen=steps, states=states,
        **{"training.max_steps": 12})
    assert steps == [10, 11, 12]
    assert states[10] == longer_states[10]
    assert_same_parameters(uninterrupted / "model-last", longer / "model-last")


def test_resume_past_max_steps_starts_over(setup, uninterrupted):
    """A checkpoint further along than the run asked for is not the run asked for."""
    steps = []
    log = run(setup, uninterrupted, resume=True, steps_seen=steps, **{"training.max_steps": 6})
    assert "Not resuming:" in log and "is from step 9, past max_steps 6" in log
    assert steps == list(range(7))


def test_resume_refuses_a_checkpoint_past_max_epochs(setup, uninterrupted):
    """Two batches an epoch: the uninterrupted run's step 9 is in epoch 4."""
    steps = []
    log = run(setup, uninterrupted, resume=True, steps_seen=steps, **{"training.max_epochs": 2})
    assert "is from epoch 4, past max_epochs 2" in log
    assert steps == [0, 1, 2, 3]


def test_resume_refuses_a_streamed_corpus(setup, tmp_path):
    output = tmp_path / "out"
    run(setup, output, **{"training.max_epochs": -1, "training.max_steps": 3})
    steps = []
    log = run(setup, output, resume=True, steps_seen=steps,
              **{"training.max_epochs": -1, "training.max_steps": 3})
    assert "Not resuming: the corpus is streamed" in log
    assert steps[0] == 0


def test_resume_refuses_a_batch_size_schedule_past_the_first_epoch(own_setup, tmp_path):
    """spaCy's batchers draw sizes from one schedule across epochs; a resumed
    run could not draw the same ones."""
    config = own_setup["config"].read_text(encoding="utf8")
    own_setup["config"].write_text(config.replace("size = 16\nget_length = null\n", (
        'get_length = null\n\n[training.batcher.size]\n@schedules = "compounding.v1"\n'
        "start = 2\nstop = 2\ncompound = 1.0\n")), encoding="utf8")
    scheduled = {"training.batcher.size": None}  # keep the config's schedule
    output = tmp_path / "out"
    run(own_setup, output, **scheduled)
    steps = []
    log = run(own_setup, output, resume=True, steps_seen=steps, **scheduled)
    assert "the batch size follows a schedule, which cannot be replayed past the first " \
           "epoch" in log
    assert steps[0] == 0


def test_resume_without_a_checkpoint_trains_from_the_start(setup, tmp_path):
    steps = []
    log = run(setup, tmp_path / "new", resume=True, steps_seen=steps,
              **{"training.max_steps": 2})
    assert "Not resuming: there is no checkpoint" in log
    assert steps == [0, 1, 2]


def test_a_broken_training_state_or_meta_stops_the_run_and_a_missing_state_starts_over(
        setup, tmp_path):
    """A training state may be deleted once no longer needed (the README says
    so): the run starts over. A damaged checkpoint stops it, every file kept."""
    output = tmp_path / "out"
    run(setup, output, **{"training.max_steps": 3})
    (state,) = (output / "training-state").iterdir()
    content = state.read_bytes()
    state.write_bytes(b"\xc1 not msgpack")
    assert_refused(setup, output, f"^the training state {state} cannot be read",
                   **{"training.max_steps": 3})
    state.write_bytes(content)
    meta = output / "model-last" / "meta.json"
    meta.write_text(meta.read_text()[:20])  # cut short
    assert_refused(setup, output, f"^{meta} cannot be read", **{"training.max_steps": 3})
    meta.unlink()
    assert_refused(setup, output, f"^{meta} cannot be read", **{"training.max_steps": 3})
    shutil.rmtree(output / "model-last")
    assert_refused(setup, output, f"^{meta} cannot be read", **{"training.max_steps": 3})
    run(setup, output, **{"training.max_steps": 3})
    (state,) = (output / "training-state").iterdir()
    state.unlink()
    steps = []
    log = run(setup, output, resume=True, steps_seen=steps, **{"training.max_steps": 3})
    assert "Not resuming: the training state of" in log and "is missing" in log
    assert steps[0] == 0


def test_a_run_stuck_at_a_zero_dev_score_says_so_once(setup, tmp_path, monkeypatch):
    """all-mpnet-base-v2's text-only run once fell into tagging everything O
    at 2e-4 and trained on for 500 updates at dev F1 0.00 without a word: after
    two zero evaluations the run says what happened and what to try."""
    make_callback = training.create_evaluation_callback

    def scoring_zero(*args):
        evaluate = make_callback(*args)
        return lambda: (0.0, evaluate()[1])

    monkeypatch.setattr(training, "create_evaluation_callback", scoring_zero)
    log = run(setup, tmp_path / "out")  # evaluations at steps 0, 3, 6 and 9
    assert log.count("the model predicts no entities") == 1
    assert log.index("the model predicts no entities") > log.index(" 6 ")
    assert not training.stuck_at_zero([(0.0, 0), (0.7, 3), (0.0, 6)])


def test_a_dev_set_without_gold_entities_is_named_not_the_learning_rate(setup, tmp_path):
    """Every dev score is 0 then: the run says why at its start, and the
    "stuck at zero" advice (a lower learning rate) would be wrong."""
    dev = tmp_path / "dev.spacy"
    docs = list(spacy.tokens.DocBin().from_disk(setup["corpus"]).get_docs(
        spacy.blank("en").vocab))
    for doc in docs:
        doc.ents = []
    spacy.tokens.DocBin(store_user_data=True, docs=docs).to_disk(dev)
    log = run(setup, tmp_path / "out", **{"paths.dev": str(dev)})  # evaluations at 0, 3, 6, 9
    assert log.count("The dev set has no gold entities") == 1
    assert log.index("The dev set has no gold entities") < log.index(" 0 ")
    assert "the model predicts no entities" not in log
