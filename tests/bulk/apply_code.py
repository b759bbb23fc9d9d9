"""Custom code for the `apply` tests, imported by workers through `--code`.

- `apply_test.colour_tags.v1`: a cheap pixel extractor (the dominant colour),
  deterministic, so runs in different processes can be compared row by row.
- `apply_test_probe`: a component that logs each doc it sees to a file, and
  SIGKILLs its own process at the first doc containing "KILL" while the
  marker file does not exist yet (it creates the marker first, so the rerun,
  or Ray's retry, goes through); with `stop_marker`, it SIGTERMs its process
  at the first doc containing "STOP" in the same way; with `poison`, it
  SIGKILLs at every doc containing that text; with `node_log`, it also logs
  the Ray node and process each doc was tagged on.
"""
import os
import signal
from typing import Any, Dict, List, Optional

from PIL import ImageStat
from spacy.language import Language

from spacy_ita.context.registry import ImageExtractor, extractors


class ColourTags(ImageExtractor):
    name = "apply_test.colour_tags.v1"
    field = "object_tags"

    def settings(self) -> Dict[str, Any]:
        return {}

    def extract(self, images: List[Any]) -> List[List[str]]:
        tags = []
        for image in images:
            means = ImageStat.Stat(image).mean
            tags.append([("red", "green", "blue")[means.index(max(means))]])
        return tags


@extractors.register("apply_test.colour_tags.v1")
def make_colour_tags() -> ColourTags:
    return ColourTags()


class Probe:
    def __init__(self, log_path: Optional[str], kill_marker: Optional[str],
                 node_log: Optional[str], poison: Optional[str], stop_marker: Optional[str]):
        self.log_path = log_path
        self.kill_marker = kill_marker
        self.node_log = node_log
        self.poison = poison
        self.stop_marker = stop_marker

    def __call__(self, doc):
        if self.log_path:
            with open(self.log_path, "a", encoding="utf8") as log:
                log.write(doc.text + "\n")
        if self.node_log:
            import ray

            with open(self.node_log, "a", encoding="utf8") as log:
                log.write(f"{ray.get_runtime_context().get_node_id()} {os.getpid()}\n")
        if self.poison and self.poison in doc.text:
            os.kill(os.getpid(), signal.SIGKILL)
        for marker, word, number in ((self.kill_marker, "KILL", signal.SIGKILL),
                                     (self.stop_marker, "STOP", signal.SIGTERM)):
            if marker and word in doc.text and _first_time(marker):
                os.kill(os.getpid(), number)
        return doc


def _first_time(marker: str) -> bool:
    """Whether the marker file was not there yet (it is now)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@Language.factory("apply_test_probe", default_config={
    "log_path": None, "kill_marker": None, "node_log": None, "poison": None,
    "stop_marker": None})
def make_probe(nlp, name, log_path: Optional[str], kill_marker: Optional[str],
               node_log: Optional[str], poison: Optional[str],
               stop_marker: Optional[str]) -> Probe:
    return Probe(log_path, kill_marker, node_log, poison, stop_marker)
