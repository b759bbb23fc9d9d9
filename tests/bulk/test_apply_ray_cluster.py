"""`apply --engine ray` on a simulated cluster of two 1-CPU nodes (Ray's
`cluster_utils.Cluster`, on this machine): both nodes tag posts, and the rows
are those of the in-process run, each once."""
import os
from collections import Counter

import pytest

ray = pytest.importorskip("ray")

from PIL import Image  # noqa: E402
from test_apply import CODE, COLOURS, build_pipeline, posts, read_jsonl, write_jsonl  # noqa: E402
from test_apply_ray import keyed  # noqa: E402

from spacy_ita.bulk import PipelineSettings, RaySettings, apply  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node of 1 CPU each, workers at the tests' priority."""
    from ray.cluster_utils import Cluster

    niceness = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    cluster.shutdown()
    if niceness is None:
        del os.environ["RAY_worker_niceness"]
    else:
        os.environ["RAY_worker_niceness"] = niceness


def test_both_nodes_tag_and_every_row_is_written_once(two_nodes, tiny_encoder, tmp_path):
    for name, colour in COLOURS.items():
        Image.new("RGB", (24, 16), colour).save(tmp_path / f"{name}.png")
    write_jsonl(tmp_path / "posts.jsonl", posts(tmp_path, 24))
    nodes = tmp_path / "nodes.log"
    model = build_pipeline(tiny_encoder, tmp_path, node_log=str(nodes))
    apply(model, tmp_path / "posts.jsonl", tmp_path / "local.jsonl",
          pipeline=PipelineSettings(code=CODE), batch_size=4, progress=False)
    nodes.unlink()  # the in-process run's lines
    # Ray Data hands batches to the actors that are up: on a busy machine the
    # second node's actor can load its pipeline after the first has tagged all
    # six batches. Starting with both up makes the test about placing and
    # feeding, not about how fast a loaded machine starts a process.
    context = ray.data.DataContext.get_current()
    waited, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 300
    try:
        summary = apply(model, tmp_path / "posts.jsonl", tmp_path / "ray.jsonl",
                        engine=RaySettings(workers=2, worker_cpus=1),
                        pipeline=PipelineSettings(code=CODE), batch_size=4, progress=False)
    finally:
        context.wait_for_min_actors_s = waited
    assert summary.n_written == 24
    assert keyed(read_jsonl(tmp_path / "ray.jsonl")) == keyed(read_jsonl(tmp_path / "local.jsonl"))
    per_node = Counter(line.split()[0] for line in nodes.read_text().splitlines())
    assert len(per_node) == 2 and min(per_node.values()) >= 4, per_node
