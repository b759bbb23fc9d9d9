"""Fixtures shared by the tests in every folder of tests/; the builders behind them
are in helpers.py. No test may need a network: helpers switches the hub off."""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per parallel worker (and the processes its tests start):
    # the workers already fill the cores, and surplus OpenMP threads spin.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import spacy

from helpers import make_tiny_encoder

# The test files that take minutes, longest first. `make test` runs files in
# parallel workers in collection order: these start first, so that no worker
# is left running one of them alone at the end.
LONGEST_FILES = ("test_project.py", "test_training_loop.py", "test_mner.py",
                 "test_crash_recovery.py", "test_apply_ray.py", "test_apply_ray_cluster.py",
                 "test_ray_cluster_work.py",
                 "test_spacy_train_with_cpu_config.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the tests of a file keep their order


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """The path of helpers.make_tiny_encoder's random 2-layer BERT, built once."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="module")
def vocab():
    """A blank English vocab for reading files, one per test module."""
    return spacy.blank("en").vocab
