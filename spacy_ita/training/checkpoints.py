"""The checkpoint store of `spacy_ita.training.loop`: model-last, model-best and the
training state a resumed run needs, each swapped in whole so that a kill never
leaves a broken checkpoint.

The training state is the optimizer's moments, the random generators and the
position in the data. Its fingerprint (config, training data, library
versions) decides whether a later run may resume from it.
"""
import hashlib
import random
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy
import srsly
import torch
from spacy.language import Language
from spacy.training import Example
from thinc.api import Optimizer, get_current_ops
from thinc.backends import get_array_ops

from ..files import recover_directory, replace_directory, replace_file
from ..visual_context import VisualContext

MODEL_LAST = "model-last"
MODEL_BEST = "model-best"
STATE_DIR = "training-state"
STATE_FORMAT = 1

# How long a run goes and how it reports: a resumed run may change these
# (to train for longer, say) and still make the updates the first run would.
RUN_LENGTH_SETTINGS = ("max_steps", "max_epochs", "patience", "eval_frequency", "logger")

# (pipe name, index in model.walk(), index of the shim or -1, parameter name):
# names an optimizer slot the same way in every process, where thinc's keys
# use model and shim ids that depend on what was built before.
ParamName = Tuple[str, int, int, str]


class CannotResume(Exception):
    """The output folder holds a checkpoint of another run than this one (its
    config, data, versions or length); the message says why."""


class DamagedCheckpoint(Exception):
    """The output folder's last checkpoint or its training state is missing
    or does not load; the message names the file."""


@dataclass
class Progress:
    """Where a run stands after its last completed step."""

    run: str
    step: int = -1  # last completed step, numbered as in spaCy's loop
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` used so far
    order: Optional[List[int]] = None  # example order of `epoch`; None for a streamed corpus
    results: List[Tuple[float, int]] = field(default_factory=list)  # (score, step)
    words: int = 0
    seconds: float = 0.0
    losses: Dict[str, float] = field(default_factory=dict)  # since the last evaluation


class ResumePoint:
    """What a save made now may record, kept current by the training loop: the
    last completed step and the random states from before the step in flight
    (None: take them when saving). Nothing while the weights change, since half
    an update cannot be resumed."""

    def __init__(self, progress: Progress):
        self.progress: Optional[Progress] = progress
        self.random_states: Optional[Dict[str, Any]] = None

    def before_step(self, states: Dict[str, Any]) -> None:
        self.random_states = states

    def updating(self) -> None:
        self.progress = None

    def after_step(self, progress: Progress) -> None:
        self.progress = progress
        self.random_states = None


class Checkpoints:
    """model-last, model-best and the training state of one output folder."""

    def __init__(self, output_path: Path, fingerprint: Dict[str, Optional[str]],
                 warn: Callable[[str], Any] = print):
        self.output = Path(output_path)
        self.warn = warn
        self.resumable = True
        self.last = self.output / MODEL_LAST
        self.best = self.output / MODEL_BEST
        self.states = self.output / STATE_DIR
        self.fingerprint = fingerprint

    def clean(self) -> None:
        """Remove what an earlier run left, as `spacy train` does."""
        for path in (self.last, self.best, self.states):
            recover_directory(path)
            if path.exists():
                shutil.rmtree(path)

    def save(self, nlp: Language, optimizer: Optimizer, progress: Progress,
             random_states: Dict[str, Any], is_best: bool, before_to_disk) -> None:
        """Write the state a resumed run needs, then swap in model-last linked
        to it (and model-best when `is_best`)."""
        self.output.mkdir(parents=True, exist_ok=True)
        state_path = self._write_state(nlp, optimizer, progress, random_states)
        if state_path is not None:
            link = {"run": progress.run, "step": progress.step, "epoch": progress.epoch}
            nlp.meta.setdefault("spacy_ita", {})["checkpoint"] = link
        else:
            nlp.meta.get("spacy_ita", {}).pop("checkpoint", None)
        with nlp.use_params(optimizer.averages):
            replace_directory(self.last, before_to_disk(nlp).to_disk)
        if is_best:
            self._copy_last_to_best()
        if self.states.exists():  # older states, and temporary files a kill left
            for path in self.states.iterdir():
                if path != state_path:
                    path.unlink()

    @contextmanager
    def final_save(self, nlp: Language, optimizer: Optimizer, progress: Progress,
                   before_to_disk) -> Iterator[ResumePoint]:
        """Save once more when the training loop ends, however it ends, as
        spaCy's loop does: at the resume point the loop last marked, or not at
        all when it stopped while the weights were changing, which keeps the
        last checkpoint."""
        point = ResumePoint(progress)
        try:
            yield point
        except Exception as err:
            self.warn(f"Aborting and saving the final model. Encountered exception: {err!r}")
            raise
        finally:
            if point.progress is None:
                kept = (f"kept the last checkpoint, {self.last}" if self.last.exists()
                        else "saved nothing")
                self.warn(f"Stopped while the weights were being updated: {kept}")
            else:
                self.save(nlp, optimizer, point.progress,
                          point.random_states or random_states(), False, before_to_disk)

    def _write_state(self, nlp: Language, optimizer: Optimizer, progress: Progress,
                     random_states: Dict[str, Any]) -> Optional[Path]:
        if not self.resumable:
            return None
        try:
            optimizer_state = get_optimizer_state(nlp, optimizer)
        except ValueError as err:
            self.resumable = False
            self.warn(f"Checkpoints from here on cannot be resumed: {err}")
            return None
        path = self.states / f"{progress.run}-{progress.step}.msgpack"
        self.states.mkdir(exist_ok=True)
        state = {
            "format": STATE_FORMAT,
            "fingerprint": self.fingerprint,
            "progress": asdict(progress),
            "random": encode_random_states(random_states),
            "optimizer": optimizer_state,
            "weights": _raw_weights(nlp) if optimizer.averages else None,
        }
        replace_file(path, srsly.msgpack_dumps(state))
        return path

    def _copy_last_to_best(self) -> None:
        replace_directory(self.best, lambda path: shutil.copytree(self.last, path))

    def restore(self, nlp: Language, optimizer: Optimizer, limits: Dict[str, Any]
                ) -> Optional[Tuple[Progress, Dict[str, Any]]]:
        """Load the last checkpoint's weights, optimizer state and progress
        into `nlp` and `optimizer`; None when the folder holds no model-last
        or model-best. CannotResume, saying why, for a checkpoint of another
        run (under this run's `limits`); DamagedCheckpoint for one that does
        not load (`nlp` may then be half loaded)."""
        state = self._matching_state(limits)
        if state is None:
            return None
        try:
            nlp.from_disk(self.last, exclude=["config"])  # the config is this run's
            if state["weights"] is not None:
                for name, data in state["weights"].items():
                    nlp.get_pipe(name).model.from_bytes(data)
            set_optimizer_state(nlp, optimizer, state["optimizer"])
        except (OSError, ValueError) as err:  # a file missing or damaged
            raise DamagedCheckpoint(f"{self.last} or its training state cannot be loaded "
                                    f"({type(err).__name__}: {err})") from err
        fields = state["progress"]
        fields["results"] = [tuple(result) for result in fields["results"]]
        progress = Progress(**fields)
        self._repair_best(progress)
        return progress, decode_random_states(state["random"])

    def _repair_best(self, progress: Progress) -> None:
        """A kill between swapping in model-last and model-best at a best
        checkpoint leaves an older model-best: copy model-last again."""
        if not progress.results:
            return
        best_score = max(score for score, _ in progress.results)
        best_step = max(step for score, step in progress.results if score == best_score)
        if best_step == progress.step and checkpoint_link(self.best).get("step") != best_step:
            self._copy_last_to_best()

    def _matching_state(self, limits: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The training state model-last links to, if this run may resume it;
        None when there is neither model-last nor model-best; else
        CannotResume or DamagedCheckpoint."""
        for path in (self.last, self.best):
            recover_directory(path)
        if not self.last.exists() and not self.best.exists():
            return None
        meta = self.last / "meta.json"
        try:
            srsly.read_json(meta)
        except ValueError as err:  # missing or unreadable, beside a model-best or a model-last
            raise DamagedCheckpoint(f"{meta} cannot be read ({err})") from None
        link = checkpoint_link(self.last)
        if not link:
            raise CannotResume(f"{self.last} was not saved at a resumable point (by "
                               "`spacy train`)")
        why_not = self._beyond(link, limits)
        if why_not:
            raise CannotResume(why_not)
        path = self.states / f"{link['run']}-{link['step']}.msgpack"
        try:
            state = srsly.msgpack_loads(path.read_bytes())
        except FileNotFoundError:  # deleted once no longer needed (the README says it may be)
            raise CannotResume(f"the training state of {self.last} is missing ({path})") from None
        except ValueError as err:
            raise DamagedCheckpoint(f"the training state {path} cannot be read ({err})") from None
        if state.get("format") != STATE_FORMAT:  # written by another version
            raise CannotResume(f"{path} has state format {state.get('format')}, "
                               f"not {STATE_FORMAT}")
        changes = {"config": "the config differs from the one",
                   "data": "the training data differs from the data",
                   "versions": "the versions of spacy-ita and its libraries differ from those"}
        for part, change in changes.items():
            if state["fingerprint"].get(part) != self.fingerprint[part]:
                raise CannotResume(f"{change} {self.last} was trained with")
        return state

    def _beyond(self, link: Dict[str, Any], limits: Dict[str, Any]) -> str:
        """Why this run's `limits` cannot take up the checkpoint `link` names;
        "" when they can."""
        if limits["max_steps"] and link["step"] > limits["max_steps"]:
            return f"{self.last} is from step {link['step']}, past max_steps {limits['max_steps']}"
        if limits["max_epochs"] < 0:
            return ("the corpus is streamed (max_epochs = -1), so the position in it cannot "
                    "be restored")
        if limits["max_epochs"] and link["epoch"] >= limits["max_epochs"]:
            return (f"{self.last} is from epoch {link['epoch']}, "
                    f"past max_epochs {limits['max_epochs']}")
        if limits["batch_size_schedule"] and link["epoch"] > 0:
            return ("the batch size follows a schedule, which cannot be replayed past the "
                    "first epoch")
        return ""


def checkpoint_link(path: Path) -> Dict[str, Any]:
    """The run and step a saved pipeline's meta.json links it to; {} if none."""
    try:
        meta = srsly.read_json(path / "meta.json")
    except ValueError:  # missing or unreadable
        return {}
    return meta.get("spacy_ita", {}).get("checkpoint") or {}


def fingerprint(config, examples: Optional[List[Example]]) -> Dict[str, Any]:
    """What must not change between a checkpoint and the run that resumes it."""
    return {"config": _config_sha256(config), "data": _data_sha256(examples),
            "versions": _versions()}


def _config_sha256(config) -> str:
    config = config.copy()
    for setting in RUN_LENGTH_SETTINGS:
        config["training"].pop(setting, None)
    return hashlib.sha256(config.to_str().encode("utf8")).hexdigest()


def _versions() -> Dict[str, str]:
    """The versions whose change could change the updates of a resumed run."""
    versions = {}
    for package in ("spacy-ita", "spacy", "thinc", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _data_sha256(examples: Optional[List[Example]]) -> Optional[str]:
    """A fingerprint of the training examples: text, tokens, gold entities and
    visual context, the same in every process. None for a streamed corpus."""
    if examples is None:
        return None
    digest = hashlib.sha256()
    for eg in examples:
        reference = eg.reference
        context = eg.predicted._.visual_context
        digest.update(srsly.msgpack_dumps([
            reference.text,
            [token.idx for token in reference],
            [token.ent_iob_ + token.ent_type_ for token in reference],
            context.to_dict() if isinstance(context, VisualContext) else repr(context),
        ]))
    return digest.hexdigest()


def random_states() -> Dict[str, Any]:
    """The states of Python's, numpy's and torch's random generators."""
    states = {"python": random.getstate(), "numpy": numpy.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def encode_random_states(states: Dict[str, Any]) -> Dict[str, Any]:
    """`random_states()` as lists and arrays that msgpack can store."""
    version_, internal, gauss = states["python"]
    kind, keys, pos, has_gauss, cached = states["numpy"]
    return {
        "python": [version_, list(internal), gauss],
        "numpy": [kind, keys, pos, has_gauss, cached],
        "torch": states["torch"].numpy(),
        "cuda": [state.numpy() for state in states.get("cuda", [])],
    }


def decode_random_states(data: Dict[str, Any]) -> Dict[str, Any]:
    """The inverse of `encode_random_states`."""
    version_, internal, gauss = data["python"]
    return {
        "python": (version_, tuple(internal), gauss),
        "numpy": tuple(data["numpy"]),
        "torch": torch.from_numpy(numpy.asarray(data["torch"], dtype="uint8").copy()),
        "cuda": [torch.from_numpy(numpy.asarray(s, dtype="uint8").copy()) for s in data["cuda"]],
    }


def _parameter_names(nlp: Language) -> Dict[Tuple[int, str], ParamName]:
    """Each optimizer key (model or shim id, parameter name) in `nlp`'s trainable
    components, with the name it has in every process."""
    names: Dict[Tuple[int, str], ParamName] = {}
    for pipe_name, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if model in (True, False, None):
            continue
        for node_index, node in enumerate(model.walk()):
            for param in node.param_names:
                names.setdefault((node.id, param), (pipe_name, node_index, -1, param))
            for shim_index, shim in enumerate(node.shims):
                params = getattr(getattr(shim, "_model", None), "named_parameters", None)
                for param, _ in params() if params is not None else []:
                    key = (shim.id, param)
                    names.setdefault(key, (pipe_name, node_index, shim_index, param))
    return names


def get_optimizer_state(nlp: Language, optimizer: Optimizer) -> Dict[str, Any]:
    """The optimizer's moments, update counts and averages, by stable name."""
    names = _parameter_names(nlp)
    slots: Dict[str, Dict] = {"mom1": optimizer.mom1, "mom2": optimizer.mom2,
                              "averages": optimizer.averages or {}}
    keys = set(optimizer.nr_update) | {key for slot in slots.values() for key in slot}
    unnamed = sorted(str(key) for key in keys if key not in names)
    if unnamed:
        raise ValueError(f"Cannot save the optimizer state: parameters {unnamed[:5]} "
                         "belong to no component of the pipeline")
    entries = []
    for key in sorted(keys, key=lambda k: names[k]):
        entry: Dict[str, Any] = {"name": list(names[key]),
                                 "nr_update": optimizer.nr_update.get(key, 0),
                                 "last_seen": optimizer.last_seen.get(key, 0)}
        for slot, values in slots.items():
            if key in values:
                entry[slot] = get_array_ops(values[key]).to_numpy(values[key])
        entries.append(entry)
    return {"entries": entries}


def set_optimizer_state(nlp: Language, optimizer: Optimizer, state: Dict[str, Any]) -> None:
    """Load `get_optimizer_state`'s output into `optimizer` for `nlp`'s parameters."""
    keys = {name: key for key, name in _parameter_names(nlp).items()}
    ops = get_current_ops()
    for entry in state["entries"]:
        name = tuple(entry["name"])
        if name not in keys:
            raise ValueError(f"The saved optimizer state names a parameter {name} "
                             "that the pipeline does not have")
        key = keys[name]
        optimizer.nr_update[key] = entry["nr_update"]
        optimizer.last_seen[key] = entry["last_seen"]
        for slot in ("mom1", "mom2", "averages"):
            if slot in entry:
                values = getattr(optimizer, slot)
                if values is not None:
                    # a writable copy: arrays read from msgpack share its read-only buffer
                    values[key] = ops.asarray(numpy.array(entry[slot], copy=True))


def _raw_weights(nlp: Language) -> Dict[str, bytes]:
    """The trainable components' weights as they are, not averaged: what a
    resumed run must go on from when model-last holds the averages."""
    return {name: proc.model.to_bytes() for name, proc in nlp.pipeline
            if getattr(proc, "is_trainable", False) and proc.model not in (True, False, None)}
