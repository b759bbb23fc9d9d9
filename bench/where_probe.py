"""`bench_where`: a pipeline component for bench/bench_apply.py that logs, per
doc, the Ray node and process that tagged it, so the benchmark can count each
worker's posts without touching the output rows. Imported through `code=`."""
import os

from spacy.language import Language


class WhereProbe:
    def __init__(self, log_path: str):
        self.log_path = log_path

    def __call__(self, doc):
        with open(self.log_path, "a", encoding="utf8") as log:
            log.write(f"{_node_id()} {os.getpid()}\n")
        return doc


def _node_id() -> str:
    """The Ray node of this process ("local" outside Ray)."""
    try:
        import ray
    except ImportError:
        return "local"
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


@Language.factory("bench_where", default_config={"log_path": ""})
def make_where_probe(nlp, name, log_path: str) -> WhereProbe:
    return WhereProbe(log_path)
