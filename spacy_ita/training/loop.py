"""Training whose checkpoints survive a kill, and which can resume from them.

`spacy train` rewrites model-last in place and copies it to model-best with
`shutil.copytree`: a run killed while it saves can leave either unloadable,
and a rerun starts again at step 0. `train` runs the same loop (for the same
config and seed: the same batches, updates and evaluations), but saves through
the checkpoint store of `spacy_ita.training.checkpoints`, which swaps each checkpoint in
whole and keeps the optimizer, the random generators and the position in the
data next to it, so that `resume=True` goes on from the last checkpoint
instead of from the start.
"""
import random
import sys
import uuid
from contextlib import contextmanager, nullcontext
from pathlib import Path
from timeit import default_timer as timer
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

from spacy.errors import Errors
from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.training.loop import (create_before_to_disk_callback, create_evaluation_callback,
                                 subdivide_batch, update_meta)
from spacy.util import registry, resolve_dot_names
from thinc.api import Optimizer, constant, fix_random_seed, set_gpu_allocator
from wasabi import Printer

from ..ner.component import ItaNer
from .checkpoints import (Checkpoints, Progress, ResumePoint, fingerprint, random_states,
                          set_random_states)

# (epoch, batch index in the epoch, the epoch's example order, batch)
Batch = Tuple[int, int, Optional[List[int]], List[Example]]


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

    def say(text: str) -> None:
        stdout.write(text + "\n")

    config = nlp.config.interpolate()
    T = _training_settings(config, use_gpu)
    train_corpus, dev_corpus = resolve_dot_names(config, [T["train_corpus"], T["dev_corpus"]])
    optimizer = T["optimizer"]
    examples = None
    if T["max_epochs"] >= 0:
        examples = list(train_corpus(nlp))
        if not examples:
            raise ValueError(Errors.E986)
    checkpoints = None
    if output_path is not None:
        checkpoints = Checkpoints(output_path, fingerprint(config, examples),
                                  warn=lambda text: say(msg.warn(text)))
    progress, states = _start(nlp, optimizer, checkpoints, config, T, resume, say, msg)
    dropouts = constant(T["dropout"]) if isinstance(T["dropout"], float) else T["dropout"]
    for _ in range(progress.step + 1):  # put the schedules where the run left them
        next(dropouts)
        optimizer.step_schedules()
    if progress.step >= 0 and _limit_reached(progress, T):
        say(msg.good(f"Training had finished after step {progress.step}"))
        return nlp, checkpoints.last
    if states is not None:
        set_random_states(states)

    evaluate = create_evaluation_callback(nlp, dev_corpus, T["score_weights"])
    before_to_disk = create_before_to_disk_callback(T["before_to_disk"])
    batches = _batches(nlp, train_corpus, examples, T["batcher"], T["max_epochs"], progress)
    say(msg.info(f"Pipeline: {nlp.pipe_names}"))
    if T["frozen_components"]:
        say(msg.info(f"Frozen components: {T['frozen_components']}"))
    if T["annotating_components"]:
        say(msg.info(f"Set annotations on update for: {T['annotating_components']}"))
    say(msg.info(f"Initial learn rate: {optimizer.learn_rate}"))
    for name, proc in nlp.pipeline:
        if isinstance(proc, ItaNer):
            say(msg.info(f"{name}: precision {proc.precision!r}, the encoder runs in "
                         f"{proc.precision_in_effect}"))

    def checkpoint(progress: Progress, info: Dict[str, Any], is_best: bool) -> None:
        """After an evaluation: the scores into the meta, and a checkpoint."""
        with nlp.select_pipes(disable=T["frozen_components"]):
            update_meta(T, nlp, info)
        progress.losses = {}  # a resumed run goes on after the reset of the losses
        if checkpoints is not None:
            checkpoints.save(nlp, optimizer, progress, random_states(), is_best, before_to_disk)
            info["output_path"] = str(checkpoints.last)

    final_save = (nullcontext(ResumePoint(progress)) if checkpoints is None
                  else checkpoints.final_save(nlp, optimizer, progress, before_to_disk))
    with _logger(nlp, T, stdout, stderr) as log_step, final_save as point:
        _steps(nlp, T, optimizer, batches, dropouts, progress, point,
               evaluate, checkpoint, log_step)
    if checkpoints is None:
        return nlp, None
    say(msg.good("Saved pipeline to output directory", checkpoints.last))
    return nlp, checkpoints.last


def _training_settings(config, use_gpu: int) -> Dict[str, Any]:
    """The resolved [training] block, after seeding the random generators."""
    if config["training"]["seed"] is not None:
        fix_random_seed(config["training"]["seed"])
    if use_gpu >= 0 and config["training"]["gpu_allocator"]:
        set_gpu_allocator(config["training"]["gpu_allocator"])
    return registry.resolve(config["training"], schema=ConfigSchemaTraining)


def _start(nlp: Language, optimizer: Optimizer, checkpoints: Optional[Checkpoints], config,
           T: Dict[str, Any], resume: bool, say: Callable[[str], None], msg: Printer
           ) -> Tuple[Progress, Optional[Dict[str, Any]]]:
    """Where the run starts, with the random states to go on with: the last
    checkpoint when `resume` finds one that matches, else step 0 in an output
    folder cleared of what an earlier run left."""
    progress = Progress(run=uuid.uuid4().hex)
    if checkpoints is None:
        return progress, None
    limits = {"max_steps": T["max_steps"], "max_epochs": T["max_epochs"],
              "batch_size_schedule": not isinstance(
                  config["training"]["batcher"].get("size", 0), (int, float))}
    restored = checkpoints.restore(nlp, optimizer, limits) if resume else None
    if restored is not None:
        progress, states = restored
        say(msg.info(f"Resuming after step {progress.step} (epoch {progress.epoch}) "
                     f"from {checkpoints.last}"))
        return progress, states
    if resume:
        say(msg.info(f"Not resuming: {checkpoints.why_not}. Training from the start."))
    checkpoints.clean()
    return progress, None


@contextmanager
def _logger(nlp: Language, T: Dict[str, Any], stdout: IO, stderr: IO) -> Iterator[Callable]:
    """The config's logger for the run: its step function, finalized at the end."""
    with nlp.select_pipes(disable=T["frozen_components"]):
        log_step, finalize = T["logger"](nlp, stdout, stderr)
    try:
        yield log_step
    finally:
        finalize()


def _steps(nlp: Language, T: Dict[str, Any], optimizer: Optimizer, batches: Iterator[Batch],
           dropouts: Iterator[float], progress: Progress, point: ResumePoint,
           evaluate: Callable, checkpoint: Callable, log_step: Callable) -> None:
    """The steps of spaCy's loop from `progress` on, marking on `point` what a
    save may record: the state before the step in flight while its weights are
    untouched; nothing while they change."""
    frozen, annotating = T["frozen_components"], T["annotating_components"]
    start = timer() - progress.seconds
    losses = dict(progress.losses)
    while True:
        point.before_step(random_states())
        item = next(batches, None)
        if item is None:
            return
        epoch, index, order, batch = item
        step = progress.step + 1
        if T["before_update"]:
            T["before_update"](nlp, {"step": step, "epoch": epoch})
        dropout = next(dropouts)
        for subbatch in subdivide_batch(batch, T["accumulate_gradient"]):
            nlp.update(subbatch, drop=dropout, losses=losses, sgd=False,
                       exclude=frozen, annotates=annotating)
        point.updating()
        _apply_gradients(nlp, optimizer, frozen)
        progress = Progress(
            run=progress.run, step=step, epoch=epoch, batches_in_epoch=index + 1,
            order=order, results=progress.results,
            words=progress.words + sum(len(eg) for eg in batch),
            losses=dict(losses),
        )
        point.after_step(progress)
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
            checkpoint(progress, info, is_best)
            losses = {}
        log_step(info if is_best is not None else None)
        if _limit_reached(progress, T):
            return


def _apply_gradients(nlp: Language, optimizer: Optimizer, frozen: List[str]) -> None:
    """One optimizer step for every trainable component, then the schedules."""
    for name, proc in nlp.pipeline:
        if name not in frozen and getattr(proc, "is_trainable", False) \
                and proc.model not in (True, False, None):
            proc.finish_update(optimizer)
    optimizer.step_schedules()


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
) -> Iterator[Batch]:
    """Batches as spaCy's `create_train_batches` makes them: shuffling a list
    of indices draws the same permutations as shuffling the examples. A
    resumed run takes up its epoch's order and skips the batches already used."""
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
