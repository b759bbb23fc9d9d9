"""Training whose checkpoints survive a kill, and which can resume from them.

`spacy train` rewrites model-last in place and copies it to model-best with
`shutil.copytree`: a run killed while it saves can leave either unloadable,
and a rerun starts again at step 0. `train` runs the same loop (for the same
config and seed: the same batches, updates and evaluations), but swaps each
checkpoint in whole and keeps the optimizer, the random generators and the
position in the data next to it, so that `resume=True` goes on from the last
checkpoint instead of from the start.
"""
import hashlib
import random
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from timeit import default_timer as timer
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy
import srsly
import torch
from spacy.errors import Errors
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.training.loop import (create_before_to_disk_callback, create_evaluation_callback,
                                 subdivide_batch, update_meta)
from spacy.util import registry, resolve_dot_names
from thinc.api import Optimizer, constant, fix_random_seed, get_current_ops, set_gpu_allocator
from thinc.backends import get_array_ops
from wasabi import Printer

from .files import recover_directory, replace_directory, replace_file
from .visual_context import VisualContext

MODEL_LAST = "model-last"
MODEL_BEST = "model-best"
STATE_DIR = "training-state"
STATE_FORMAT = 1

# (pipe name, index in model.walk(), index of the shim or -1, parameter name):
# names an optimizer slot the same way in every process, where thinc's keys
# use model and shim ids that depend on what was built before.
ParamName = Tuple[str, int, int, str]


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


def train(
    nlp: Language,
    output_path: Optional[Path] = None,
    *,
    use_gpu: int = -1,
    resume: bool = False,
    stdout: IO = sys.stdout,
    stderr: IO = sys.stderr,
) -> Tuple[Language, Optional[Path]]:
    """Train an initialized pipeline as `spacy.training.loop.train` does, with
    crash-safe checkpoints in `output_path`. With `resume`, continue from the
    checkpoint there when it comes from the same config and training data;
    otherwise say why not and train from the start."""
    msg = Printer(no_print=True)
    config = nlp.config.interpolate()
    if config["training"]["seed"] is not None:
        fix_random_seed(config["training"]["seed"])
    if use_gpu >= 0 and config["training"]["gpu_allocator"]:
        set_gpu_allocator(config["training"]["gpu_allocator"])
    T = registry.resolve(config["training"], schema=ConfigSchemaTraining)
    train_corpus, dev_corpus = resolve_dot_names(config, [T["train_corpus"], T["dev_corpus"]])
    optimizer = T["optimizer"]
    examples = None
    if T["max_epochs"] >= 0:
        examples = list(train_corpus(nlp))
        if not examples:
            raise ValueError(Errors.E986)
    fingerprint = {"config": _config_sha256(config), "data": _data_sha256(examples),
                   "versions": _versions()}
    checkpoints = None
    if output_path is not None:
        checkpoints = Checkpoints(output_path, fingerprint, warn=lambda text: stdout.write(
            msg.warn(text) + "\n"))
    progress, random_states = Progress(run=uuid.uuid4().hex), None
    if checkpoints is not None:
        limits = {"max_steps": T["max_steps"], "max_epochs": T["max_epochs"],
                  "batch_size_schedule": not isinstance(
                      config["training"]["batcher"].get("size", 0), (int, float))}
        restored = checkpoints.restore(nlp, optimizer, limits) if resume else None
        if restored is not None:
            progress, random_states = restored
            stdout.write(msg.info(f"Resuming after step {progress.step} "
                                  f"(epoch {progress.epoch}) from {checkpoints.last}") + "\n")
        else:
            if resume:
                stdout.write(msg.info(f"Not resuming: {checkpoints.why_not}. "
                                      "Training from the start.") + "\n")
            checkpoints.clean()
    dropouts = constant(T["dropout"]) if isinstance(T["dropout"], float) else T["dropout"]
    for _ in range(progress.step + 1):  # put the schedules where the run left them
        next(dropouts)
        optimizer.step_schedules()
    if progress.step >= 0 and _limit_reached(progress, T):
        stdout.write(msg.good(f"Training had finished after step {progress.step}") + "\n")
        return nlp, checkpoints.last
    if random_states is not None:
        _set_random_states(random_states)

    frozen = T["frozen_components"]
    annotating = T["annotating_components"]
    evaluate = create_evaluation_callback(nlp, dev_corpus, T["score_weights"])
    before_to_disk = create_before_to_disk_callback(T["before_to_disk"])
    batches = _batches(nlp, train_corpus, examples, T["batcher"], T["max_epochs"], progress)
    stdout.write(msg.info(f"Pipeline: {nlp.pipe_names}") + "\n")
    if frozen:
        stdout.write(msg.info(f"Frozen components: {frozen}") + "\n")
    if annotating:
        stdout.write(msg.info(f"Set annotations on update for: {annotating}") + "\n")
    stdout.write(msg.info(f"Initial learn rate: {optimizer.learn_rate}") + "\n")
    with nlp.select_pipes(disable=frozen):
        log_step, finalize_logger = T["logger"](nlp, stdout, stderr)

    start = timer() - progress.seconds
    losses = dict(progress.losses)
    # What the final save may record: the state before the step in flight
    # while its weights are untouched; nothing while they change.
    rollback: Optional[Tuple[Progress, Optional[Dict[str, Any]]]] = (progress, None)
    try:
        while True:
            states_before_step = _random_states()
            rollback = (progress, states_before_step)
            item = next(batches, None)
            if item is None:
                break
            epoch, index, order, batch = item
            step = progress.step + 1
            if T["before_update"]:
                T["before_update"](nlp, {"step": step, "epoch": epoch})
            dropout = next(dropouts)
            for subbatch in subdivide_batch(batch, T["accumulate_gradient"]):
                nlp.update(subbatch, drop=dropout, losses=losses, sgd=False,
                           exclude=frozen, annotates=annotating)
            rollback = None
            _apply_gradients(nlp, optimizer, frozen)
            progress = Progress(
                run=progress.run, step=step, epoch=epoch, batches_in_epoch=index + 1,
                order=order, results=progress.results,
                words=progress.words + sum(len(eg) for eg in batch),
                losses=dict(losses),
            )
            rollback = (progress, None)
            is_best, score, other_scores = None, None, None
            if not step % T["eval_frequency"]:
                with nlp.use_params(optimizer.averages):
                    score, other_scores = evaluate()
                progress.results.append((score, step))
                is_best = score == max(progress.results)[0]
            progress.seconds = timer() - start
            info = {"epoch": epoch, "step": step, "score": score, "other_scores": other_scores,
                    "losses": losses, "checkpoints": progress.results,
                    "seconds": int(progress.seconds), "words": progress.words}
            if is_best is not None:
                with nlp.select_pipes(disable=frozen):
                    update_meta(T, nlp, info)
                progress.losses = {}  # a resumed run goes on after the reset below
                if checkpoints is not None:
                    checkpoints.save(nlp, optimizer, progress, _random_states(), is_best,
                                     before_to_disk)
                    info["output_path"] = str(checkpoints.last)
                losses = {}
            log_step(info if is_best is not None else None)
            if _limit_reached(progress, T):
                break
    except Exception as err:
        if checkpoints is not None:
            stdout.write(msg.warn(f"Aborting and saving the final model. "
                                  f"Encountered exception: {err!r}") + "\n")
        raise
    finally:
        finalize_logger()
        if checkpoints is not None and rollback is None:
            kept = (f"kept the last checkpoint, {checkpoints.last}" if checkpoints.last.exists()
                    else "saved nothing")
            stdout.write(msg.warn(f"Stopped while the weights were being updated: {kept}")
                         + "\n")
        elif checkpoints is not None:
            saved_progress, states = rollback
            checkpoints.save(nlp, optimizer, saved_progress, states or _random_states(),
                             False, before_to_disk)
    if checkpoints is None:
        return nlp, None
    stdout.write(msg.good("Saved pipeline to output directory", checkpoints.last) + "\n")
    return nlp, checkpoints.last


def _apply_gradients(nlp: Language, optimizer: Optimizer, frozen: List[str]) -> None:
    """One optimizer step for every trainable component, then the schedules."""
    for name, proc in nlp.pipeline:
        if name not in frozen and getattr(proc, "is_trainable", False) \
                and proc.model not in (True, False, None):
            proc.finish_update(optimizer)
    optimizer.step_schedules()


def _checkpoint_link(path: Path) -> Dict[str, Any]:
    """The run and step a saved pipeline's meta.json links it to; {} if none."""
    try:
        meta = srsly.read_json(path / "meta.json")
    except ValueError:  # missing or unreadable
        return {}
    return meta.get("spacy_ita", {}).get("checkpoint") or {}


def _limit_reached(progress: Progress, T: Dict[str, Any]) -> bool:
    """Whether `patience` or `max_steps` ends the run after its last step."""
    if T["patience"] and progress.results:
        # the earliest of equal best scores counts, as in spaCy's loop
        best_step = -max((score, -step) for score, step in progress.results)[1]
        if progress.step - best_step >= T["patience"]:
            return True
    return bool(T["max_steps"]) and progress.step >= T["max_steps"]


def _batches(
    nlp: Language,
    corpus: Callable[[Language], Iterator[Example]],
    examples: Optional[List[Example]],
    batcher: Callable,
    max_epochs: int,
    progress: Progress,
) -> Iterator[Tuple[int, int, Optional[List[int]], List[Example]]]:
    """(epoch, batch index in the epoch, the epoch's example order, batch) as
    spaCy's `create_train_batches` makes them: shuffling a list of indices
    draws the same permutations as shuffling the examples. A resumed run takes
    up its epoch's order and skips the batches already used."""
    epoch = progress.epoch
    order = progress.order
    resuming = progress.step >= 0
    if examples is not None and order is None:
        order = list(range(len(examples)))
    while max_epochs < 1 or epoch != max_epochs:
        if examples is not None:
            if not resuming:
                order = list(order)
                random.shuffle(order)
            epoch_examples = [examples[i] for i in order]
        else:
            epoch_examples = corpus(nlp)
        skip = progress.batches_in_epoch if resuming else 0
        resuming = False
        for index, batch in enumerate(batcher(epoch_examples)):
            if index >= skip:
                yield epoch, index, order, batch
        epoch += 1


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
        self.why_not = ""  # why `restore` found nothing to resume

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

    def _write_state(self, nlp: Language, optimizer: Optimizer, progress: Progress,
                     random_states: Dict[str, Any]) -> Optional[Path]:
        if not self.resumable:
            return None
        try:
            optimizer_state = _optimizer_state(nlp, optimizer)
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
            "random": _encode_random_states(random_states),
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
        into `nlp` and `optimizer`; None (see `why_not`) if it cannot be
        resumed under this run's `limits`."""
        state = self._matching_state(limits)
        if state is None:
            return None
        nlp.from_disk(self.last, exclude=["config"])  # the config is this run's
        if state["weights"] is not None:
            for name, data in state["weights"].items():
                nlp.get_pipe(name).model.from_bytes(data)
        _set_optimizer_state(nlp, optimizer, state["optimizer"])
        fields = state["progress"]
        fields["results"] = [tuple(result) for result in fields["results"]]
        progress = Progress(**fields)
        self._repair_best(progress)
        return progress, _decode_random_states(state["random"])

    def _repair_best(self, progress: Progress) -> None:
        """A kill between swapping in model-last and model-best at a best
        checkpoint leaves an older model-best: copy model-last again."""
        if not progress.results:
            return
        best_score = max(score for score, _ in progress.results)
        best_step = max(step for score, step in progress.results if score == best_score)
        if best_step == progress.step and _checkpoint_link(self.best).get("step") != best_step:
            self._copy_last_to_best()

    def _matching_state(self, limits: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        for path in (self.last, self.best):
            recover_directory(path)
        if not (self.last / "meta.json").exists():
            self.why_not = f"there is no checkpoint in {self.output}"
            return None
        link = _checkpoint_link(self.last)
        if not link:
            self.why_not = (f"{self.last} was not saved at a resumable point (by `spacy train`, "
                            "or its meta.json cannot be read)")
            return None
        if limits["max_steps"] and link["step"] > limits["max_steps"]:
            self.why_not = (f"{self.last} is from step {link['step']}, "
                            f"past max_steps {limits['max_steps']}")
            return None
        if limits["max_epochs"] < 0:
            self.why_not = ("the corpus is streamed (max_epochs = -1), so the position in "
                            "it cannot be restored")
            return None
        if limits["max_epochs"] and link["epoch"] >= limits["max_epochs"]:
            self.why_not = (f"{self.last} is from epoch {link['epoch']}, "
                            f"past max_epochs {limits['max_epochs']}")
            return None
        if limits["batch_size_schedule"] and link["epoch"] > 0:
            self.why_not = ("the batch size follows a schedule, which cannot be replayed "
                            "past the first epoch")
            return None
        path = self.states / f"{link['run']}-{link['step']}.msgpack"
        try:
            state = srsly.msgpack_loads(path.read_bytes())
        except FileNotFoundError:
            self.why_not = f"the training state of {self.last} is missing ({path})"
            return None
        except ValueError as err:
            self.why_not = f"the training state {path} cannot be read ({err})"
            return None
        if state.get("format") != STATE_FORMAT:
            self.why_not = f"{path} has state format {state.get('format')}, not {STATE_FORMAT}"
            return None
        changes = {"config": "the config differs from the one",
                   "data": "the training data differs from the data",
                   "versions": "the versions of spacy-ita and its libraries differ from those"}
        for part, change in changes.items():
            if state["fingerprint"].get(part) != self.fingerprint[part]:
                self.why_not = f"{change} {self.last} was trained with"
                return None
        return state


# How long a run goes and how it reports: a resumed run may change these
# (to train for longer, say) and still make the updates the first run would.
RUN_LENGTH_SETTINGS = ("max_steps", "max_epochs", "patience", "eval_frequency", "logger")


def _config_sha256(config) -> str:
    config = config.copy()
    for setting in RUN_LENGTH_SETTINGS:
        config["training"].pop(setting, None)
    return hashlib.sha256(config.to_str().encode("utf8")).hexdigest()


def _versions() -> Dict[str, str]:
    """The versions whose change could change the updates of a resumed run."""
    from importlib.metadata import PackageNotFoundError, version

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


def _random_states() -> Dict[str, Any]:
    states = {"python": random.getstate(), "numpy": numpy.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: Dict[str, Any]) -> None:
    random.setstate(states["python"])
    numpy.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _encode_random_states(states: Dict[str, Any]) -> Dict[str, Any]:
    version, internal, gauss = states["python"]
    kind, keys, pos, has_gauss, cached = states["numpy"]
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys, pos, has_gauss, cached],
        "torch": states["torch"].numpy(),
        "cuda": [state.numpy() for state in states.get("cuda", [])],
    }


def _decode_random_states(data: Dict[str, Any]) -> Dict[str, Any]:
    version, internal, gauss = data["python"]
    return {
        "python": (version, tuple(internal), gauss),
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


def _optimizer_state(nlp: Language, optimizer: Optimizer) -> Dict[str, Any]:
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


def _set_optimizer_state(nlp: Language, optimizer: Optimizer, state: Dict[str, Any]) -> None:
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
