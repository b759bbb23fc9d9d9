"""`apply --engine ray` on a local 2-CPU Ray: the rows of the in-process run,
in one stage or two, none lost or doubled when a worker is SIGKILLed, a post
that kills its worker every time costs only its row, and failures are one line."""
import json
import os
import shutil

import pytest

ray = pytest.importorskip("ray")

from test_apply import CODE, build_pipeline, posts, read_jsonl, write_jsonl  # noqa: E402

from spacy_ita.bulk import Fetcher, PipelineSettings, RaySettings, apply  # noqa: E402
from spacy_ita.bulk.inputs import Columns, DoneRows, find_inputs  # noqa: E402
from spacy_ita.bulk.ray_engine import read_dataset  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs whose workers run at the tests' own priority (Ray
    starts them at nice +15, which starves them on a busy machine)."""
    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()
    if niceness is None:
        del os.environ["RAY_worker_niceness"]
    else:
        os.environ["RAY_worker_niceness"] = niceness


@pytest.fixture(scope="module")
def ray_inputs(tiny_encoder, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("apply_ray")
    for name, colour in {"red": (230, 20, 20), "green": (20, 200, 20),
                         "blue": (20, 20, 230)}.items():
        Image.new("RGB", (24, 16), colour).save(folder / f"{name}.png")
    records = posts(folder, 30)
    records[13]["text"] = "KILL the lights"  # the probe of the kill test dies here, once
    write_jsonl(folder / "in" / "a.jsonl", records[:18])
    write_jsonl(folder / "in" / "b.jsonl", records[18:] + [{"id": "bad", "image": "red.png"}])
    model = build_pipeline(tiny_encoder, folder)
    apply(model, folder / "in", folder / "local.jsonl", pipeline=PipelineSettings(code=CODE),
          images=Fetcher(image_root=folder), batch_size=4, progress=False)
    return folder, model


def keyed(rows):
    return sorted(rows, key=lambda row: (row["input_file"], row["input_row"]))


def test_each_batch_is_a_block_of_its_own(local_ray, ray_inputs):
    """A file read as one block went whole to one actor while the others
    idled, and a block per post starved them: the read cuts a one-row block
    per batch of posts, skipping rows already done."""
    folder, _ = ray_inputs
    done = DoneRows()
    done.add("a.jsonl", 0)
    dataset = read_dataset(ray, find_inputs(str(folder / "in")), Columns("text", "image", None),
                           done, batch_size=4)
    blocks = [list(block["posts"]) for block in dataset.iter_batches(batch_size=None)]
    assert [len(block) for block in blocks] == [1] * 9  # rows per block
    assert sorted(len(posts) for [posts] in blocks) == [1, 1] + [4] * 7  # 17 and 13 posts in 4s
    assert sorted((post.file, post.row) for [posts] in blocks for post in posts) == sorted(
        [("a.jsonl", row) for row in range(1, 18)] + [("b.jsonl", row) for row in range(13)])


def test_ray_gives_the_rows_of_the_in_process_run(local_ray, ray_inputs, tmp_path):
    folder, model = ray_inputs
    summary = apply(model, folder / "in", tmp_path / "ray.jsonl",
                    engine=RaySettings(workers=2, worker_cpus=0.5),
                    pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=folder),
                    batch_size=4, progress=False)
    expected = read_jsonl(folder / "local.jsonl")
    assert summary.n_written == len(expected) == 31 and summary.n_errors == 1
    assert keyed(read_jsonl(tmp_path / "ray.jsonl")) == keyed(expected)


def test_two_stages_with_a_killed_worker_lose_no_post(local_ray, ray_inputs, tiny_encoder,
                                                      tmp_path):
    """Extraction and tagging in their own actors; the tagger SIGKILLs itself
    on one batch, Ray restarts it and retries: the rows are still those of the
    in-process run, each once."""
    folder, _ = ray_inputs
    marker = tmp_path / "killed"
    model = build_pipeline(tiny_encoder, tmp_path, kill_marker=str(marker))
    records = read_jsonl(folder / "local.jsonl")
    summary = apply(model, folder / "in", tmp_path / "ray.jsonl",
                    engine=RaySettings(workers=1, worker_cpus=0.5, extract_workers=1,
                                       extract_cpus=0.5),
                    pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=folder),
                    batch_size=4, progress=False)
    assert marker.exists(), "no worker was killed"
    assert summary.n_written == 31
    assert keyed(read_jsonl(tmp_path / "ray.jsonl")) == keyed(records)


def test_ray_actors_apply_the_trust_model(local_ray, ray_inputs, tmp_path):
    """The image root and the URL rules travel to the actors: a file outside
    the root and a loopback URL are refused there as in-process."""
    folder, model = ray_inputs
    records = [{"id": "in", "text": "Kobe scores again", "image": "red.png"},
               {"id": "out", "text": "Kobe scores again", "image": str(folder / "red.png")},
               {"id": "url", "text": "Kobe scores again", "image": "http://127.0.0.1:9/red.png"}]
    (tmp_path / "red.png").write_bytes((folder / "red.png").read_bytes())
    write_jsonl(tmp_path / "posts.jsonl", records)
    apply(model, tmp_path / "posts.jsonl", tmp_path / "ray.jsonl",
          engine=RaySettings(workers=1, worker_cpus=0.5), pipeline=PipelineSettings(code=CODE),
          progress=False)
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "ray.jsonl")}
    assert rows["in"]["visual_context"]["object_tags"] == ["red"]
    assert "outside the image root" in rows["out"]["image_error"]
    assert "loopback address: refused" in rows["url"]["image_error"]


def test_a_post_that_kills_its_ray_worker_costs_only_its_row(local_ray, ray_inputs, tiny_encoder,
                                                             tmp_path):
    """Ray restarted the actor and retried the batch for ever, and held back
    the good rows: a batch is tried WORKER_DEATHS times, then its posts one by
    one, and the post that kills its worker alone too gets an error row."""
    texts = ["Kobe scores again", "Lakers beat Boston tonight"]
    records = [{"id": i, "text": "POISON in Boston" if i == 5 else texts[i % 2]}
               for i in range(8)]
    poisoned = build_pipeline(tiny_encoder, tmp_path, poison="POISON")
    write_jsonl(tmp_path / "posts.jsonl", records)
    summary = apply(poisoned, tmp_path / "posts.jsonl", tmp_path / "ray.jsonl",
                    engine=RaySettings(workers=1, worker_cpus=0.5),
                    pipeline=PipelineSettings(code=CODE), batch_size=4, progress=False)
    rows = keyed(read_jsonl(tmp_path / "ray.jsonl"))
    assert summary.n_written == 8 and summary.n_errors == 1
    assert [row["input_row"] for row in rows] == list(range(8))
    assert "line 6: not tagged: the worker process died while tagging this post alone" in \
        rows[5]["error"]
    _, model = ray_inputs
    apply(model, tmp_path / "posts.jsonl", tmp_path / "local.jsonl",
          pipeline=PipelineSettings(code=CODE), batch_size=4, progress=False)
    expected = read_jsonl(tmp_path / "local.jsonl")
    assert rows[:5] + rows[6:] == expected[:5] + expected[6:]


def test_a_row_too_deep_to_pickle_is_an_error_row_not_a_failed_job(local_ray, ray_inputs,
                                                                   tmp_path):
    folder, model = ray_inputs
    deep = {"id": "deep", "text": "Kobe scores again", "meta": json.loads("[" * 600 + "]" * 600)}
    write_jsonl(tmp_path / "posts.jsonl", [{"id": "ok", "text": "Kobe scores again"}, deep])
    apply(model, tmp_path / "posts.jsonl", tmp_path / "ray.jsonl",
          engine=RaySettings(workers=1, worker_cpus=0.5), pipeline=PipelineSettings(code=CODE),
          progress=False)
    rows = keyed(read_jsonl(tmp_path / "ray.jsonl"))
    assert rows[0]["error"] is None
    assert "line 2: lists and objects nested deeper than 100 levels" in rows[1]["error"]


def test_a_pipeline_its_actors_cannot_load_is_one_clear_error(local_ray, ray_inputs, tmp_path):
    """Ray's error was hundreds of lines of remote traceback that the CLI did
    not catch; now a RuntimeError naming the cause, as in-process."""
    folder, model = ray_inputs
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    weights = broken / "ita_ner" / "model"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RuntimeError) as caught:
        apply(str(broken), folder / "in" / "a.jsonl", tmp_path / "ray.jsonl",
              engine=RaySettings(workers=1, worker_cpus=0.5),
              pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=folder),
              progress=False)
    message = str(caught.value)
    assert message.startswith("the Ray job failed: ValueError: ita_ner: cannot load")
    assert "\n" not in message


def test_a_file_gone_before_its_read_task_stops_the_job(local_ray, ray_inputs, tmp_path,
                                                        monkeypatch):
    """Ray Data drops a block that raises (so that a post that kills its actor
    costs only its row): an exception in a read task or an actor comes to the
    driver as a failure instead, which stops the run as in-process."""
    from spacy_ita.bulk import run as run_module

    folder, model = ray_inputs
    shutil.copytree(folder / "in", tmp_path / "in")
    find_inputs_there = run_module.find_inputs

    def find_then_delete(spec):
        found = find_inputs_there(spec)
        (tmp_path / "in" / "b.jsonl").unlink()
        return found

    monkeypatch.setattr(run_module, "find_inputs", find_then_delete)
    with pytest.raises(RuntimeError, match="the Ray job failed: FileNotFoundError: .*b.jsonl"):
        apply(model, tmp_path / "in", tmp_path / "ray.jsonl",
              engine=RaySettings(workers=1, worker_cpus=0.5),
              pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=folder),
              batch_size=4, progress=False)


def test_an_exception_in_an_actor_is_a_failure_not_a_dropped_batch():
    """A bug outside the per-post retry (here the annotator itself) must not
    read as a worker death, whose batch is redone and whose posts get
    "worker died" rows: the actor hands the driver a failure to raise."""
    from spacy_ita.bulk.ray_engine import _Failure, _Stage

    def broken(posts):
        raise KeyError("a bug")

    stage = _Stage.__new__(_Stage)
    stage.annotator = broken
    block = stage({"posts": [["a post"], _Failure("earlier")]})
    first, second = block["posts"]
    assert first == _Failure("KeyError: 'a bug'") and second == _Failure("earlier")
