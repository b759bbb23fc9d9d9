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
from dataclasses import dataclass
from pathlib import Path
from timeit import default_timer as timer
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

from spacy.errors import Errors
from spacy.language import Language
from spacy.training import Example
from spacy.training.loop import create_evaluation_callback, subdivide_batch, update_meta
from thinc.api import constant
from wasabi import Printer

from ..ner.component import ItaNer
from .checkpoints import (CannotResume, Checkpoints, Progress, ResumePoint, fingerprint,
                          random_states, set_random_states)
from .settings import TrainingSettings

# (epoch, batch index in the epoch, the epoch's example order, batch)
Batch = Tuple[int, int, Optional[List[int]], List[Example]]


def train(
    nlp: Language,
    output_path: Optional[Path] = None,
    *,
    use_gpu: int = -1,
    resume: bool = False,
    stdout: Optional[IO] = None,
    stderr: Optional[IO] = None,
) -> Tuple[Language, Optional[Path]]:
    """Train an initialized pipeline as `spacy.training.loop.train` does, with
    crash-safe checkpoints in `output_path`. With `resume`, continue from the
    checkpoint there when it comes from the same config and training data;
    otherwise say why not and train from the start (DamagedCheckpoint, the
    folder left as it is, when the checkpoint does not load).
    `stdout` and `stderr` default to sys's at the call, which may have been
    replaced since this module was imported (as in a test's CLI runner)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    run = _Run(nlp, Printer(no_print=True), stdout)
    config = nlp.config.interpolate()
    settings = TrainingSettings.from_config(config, use_gpu)
    examples = _training_examples(nlp, settings)
    dev_has_gold = any(eg.reference.ents for eg in settings.dev_corpus(nlp))
    checkpoints = None
    if output_path is not None:
        checkpoints = Checkpoints(output_path, fingerprint(config, examples),
                                  warn=lambda text: run.say(run.msg.warn(text)))
    progress, states = _start(run, settings, checkpoints, resume)
    dropouts = _schedules_after(settings, progress)
    if progress.step >= 0 and settings.finished(progress):
        run.say(run.msg.good(f"Training had finished after step {progress.step}"))
        return nlp, checkpoints.last
    if states is not None:
        set_random_states(states)
    batches = _batches(nlp, settings, examples, progress)
    _report_start(run, settings)
    if not dev_has_gold:
        run.say(run.msg.warn(NO_DEV_ENTITIES))
    steps = _Steps(run, settings, checkpoints,
                   create_evaluation_callback(nlp, settings.dev_corpus, settings.score_weights),
                   dev_has_gold)
    final_save = (nullcontext(ResumePoint(progress)) if checkpoints is None
                  else checkpoints.final_save(nlp, settings.optimizer, progress,
                                              settings.before_to_disk))
    with _logger(nlp, settings, stdout, stderr) as log_step, final_save as point:
        steps.train_from(progress, batches, dropouts, point, log_step)
    if checkpoints is None:
        return nlp, None
    run.say(run.msg.good("Saved pipeline to output directory", checkpoints.last))
    return nlp, checkpoints.last


STUCK_AT_ZERO = (
    "The dev score was 0 at the last two evaluations: the model predicts no entities (it "
    "fell into tagging every token O, which more training rarely leaves). Try a lower "
    "learning rate ([training.optimizer.learn_rate] initial_rate: all-mpnet-base-v2's "
    "text-only run did this at 2e-4 and learned at 1e-4), a longer warm-up or another seed.")


NO_DEV_ENTITIES = (
    "The dev set has no gold entities: every dev score will be 0, so the scores cannot "
    "choose model-best or stop the run early. Pass a dev set with annotated entities "
    "(paths.dev).")


def stuck_at_zero(results: List[Tuple[float, int]]) -> bool:
    """Whether the dev scores (score, step) have just become 0 twice in a row
    after the start: a collapse, said once."""
    trained = [score for score, step in results if step > 0]
    return trained[-2:] == [0.0, 0.0] and trained[-3:-2] != [0.0]


@dataclass
class _Run:
    """The pipeline a run trains and where it reports (wasabi's formatting,
    written to `stdout`)."""

    nlp: Language
    msg: Printer
    stdout: IO

    def say(self, text: str) -> None:
        self.stdout.write(text + "\n")


def _training_examples(nlp: Language, settings: TrainingSettings) -> Optional[List[Example]]:
    """The training corpus read once, as spaCy's loop does; None when it is
    streamed (max_epochs = -1)."""
    if settings.max_epochs < 0:
        return None
    examples = list(settings.train_corpus(nlp))
    if not examples:
        raise ValueError(Errors.E986)
    return examples


def _start(run: _Run, settings: TrainingSettings, checkpoints: Optional[Checkpoints],
           resume: bool) -> Tuple[Progress, Optional[Dict[str, Any]]]:
    """Where the run starts, with the random states to go on with: the last
    checkpoint with `resume` when it is this run's, else step 0 in an output
    folder cleared of what an earlier run left. A damaged checkpoint stops
    the run (DamagedCheckpoint) and stays as it is."""
    progress = Progress(run=uuid.uuid4().hex)
    if checkpoints is None:
        return progress, None
    if resume:
        try:
            restored = checkpoints.restore(run.nlp, settings.optimizer, settings.resume_limits)
            why_not = f"there is no checkpoint in {checkpoints.output}"
        except CannotResume as err:
            restored, why_not = None, str(err)
        if restored is not None:
            progress, states = restored
            run.say(run.msg.info(f"Resuming after step {progress.step} (epoch "
                                 f"{progress.epoch}) from {checkpoints.last}"))
            return progress, states
        run.say(run.msg.info(f"Not resuming: {why_not}. Training from the start."))
    checkpoints.clean()
    return progress, None


def _schedules_after(settings: TrainingSettings, progress: Progress) -> Iterator[float]:
    """The dropout rates from the step after `progress` on, with the optimizer's
    schedules moved to where the run left them."""
    dropout = settings.dropout
    dropouts = constant(dropout) if isinstance(dropout, float) else dropout
    for _ in range(progress.step + 1):
        next(dropouts)
        settings.optimizer.step_schedules()
    return dropouts


def _report_start(run: _Run, settings: TrainingSettings) -> None:
    """What spaCy's loop says before the first step, and each ita_ner's precision."""
    run.say(run.msg.info(f"Pipeline: {run.nlp.pipe_names}"))
    if settings.frozen_components:
        run.say(run.msg.info(f"Frozen components: {settings.frozen_components}"))
    if settings.annotating_components:
        run.say(run.msg.info(f"Set annotations on update for: {settings.annotating_components}"))
    run.say(run.msg.info(f"Initial learn rate: {settings.optimizer.learn_rate}"))
    for name, proc in run.nlp.pipeline:
        if isinstance(proc, ItaNer):
            run.say(run.msg.info(f"{name}: precision {proc.precision!r}, the encoder runs in "
                                 f"{proc.precision_in_effect}"))


@contextmanager
def _logger(nlp: Language, settings: TrainingSettings, stdout: IO, stderr: IO
            ) -> Iterator[Callable]:
    """The config's logger for the run: its step function, finalized at the end."""
    with nlp.select_pipes(disable=settings.frozen_components):
        log_step, finalize = settings.logger(nlp, stdout, stderr)
    try:
        yield log_step
    finally:
        finalize()


@dataclass
class _Steps:
    """The steps of spaCy's loop, with an evaluation and a checkpoint every
    `eval_frequency` steps."""

    run: _Run
    settings: TrainingSettings
    checkpoints: Optional[Checkpoints]
    evaluate: Callable[[], Tuple[float, Dict[str, Any]]]
    dev_has_gold: bool  # else every score is 0, and "stuck at zero" would blame the training

    def train_from(self, progress: Progress, batches: Iterator[Batch],
                   dropouts: Iterator[float], point: ResumePoint, log_step: Callable) -> None:
        """The steps from `progress` on, marking on `point` what a save may
        record: the state before the step in flight while its weights are
        untouched; nothing while they change."""
        start = timer() - progress.seconds
        losses = dict(progress.losses)
        while True:
            point.before_step(random_states())
            item = next(batches, None)
            if item is None:
                return
            epoch, index, order, batch = item
            step = progress.step + 1
            self._update(batch, step, epoch, dropouts, losses)
            point.updating()
            self._apply_gradients()
            progress = Progress(
                run=progress.run, step=step, epoch=epoch, batches_in_epoch=index + 1,
                order=order, results=progress.results,
                words=progress.words + sum(len(eg) for eg in batch),
                losses=dict(losses),
            )
            point.after_step(progress)
            score, other_scores = self._evaluate(progress)
            progress.seconds = timer() - start
            info = {"epoch": epoch, "step": step, "score": score, "other_scores": other_scores,
                    "losses": losses, "checkpoints": progress.results,
                    "seconds": int(progress.seconds), "words": progress.words}
            if score is not None:
                self._checkpoint(progress, info, is_best=score == max(progress.results)[0])
                losses = {}
            log_step(info if score is not None else None)
            if score is not None and self.dev_has_gold and stuck_at_zero(progress.results):
                self.run.say(self.run.msg.warn(STUCK_AT_ZERO))
            if self.settings.finished(progress):
                return

    def _update(self, batch: List[Example], step: int, epoch: int, dropouts: Iterator[float],
                losses: Dict[str, float]) -> None:
        """The gradients of one step, in subbatches of `accumulate_gradient`."""
        settings = self.settings
        if settings.before_update:
            settings.before_update(self.run.nlp, {"step": step, "epoch": epoch})
        dropout = next(dropouts)
        for subbatch in subdivide_batch(batch, settings.accumulate_gradient):
            self.run.nlp.update(subbatch, drop=dropout, losses=losses, sgd=False,
                                exclude=settings.frozen_components,
                                annotates=settings.annotating_components)

    def _apply_gradients(self) -> None:
        """One optimizer step for every trainable component, then the schedules."""
        optimizer = self.settings.optimizer
        for name, proc in self.run.nlp.pipeline:
            if name not in self.settings.frozen_components \
                    and getattr(proc, "is_trainable", False) \
                    and proc.model not in (True, False, None):
                proc.finish_update(optimizer)
        optimizer.step_schedules()

    def _evaluate(self, progress: Progress) -> Tuple[Optional[float], Optional[Dict[str, Any]]]:
        """The dev scores with the averaged weights when an evaluation is due,
        recorded in `progress.results`; (None, None) otherwise."""
        if progress.step % self.settings.eval_frequency:
            return None, None
        with self.run.nlp.use_params(self.settings.optimizer.averages):
            score, other_scores = self.evaluate()
        progress.results.append((score, progress.step))
        return score, other_scores

    def _checkpoint(self, progress: Progress, info: Dict[str, Any], is_best: bool) -> None:
        """After an evaluation: the scores into the meta, and a checkpoint."""
        nlp, settings = self.run.nlp, self.settings
        with nlp.select_pipes(disable=settings.frozen_components):
            update_meta({"score_weights": settings.score_weights}, nlp, info)
        progress.losses = {}  # a resumed run goes on after the reset of the losses
        if self.checkpoints is not None:
            self.checkpoints.save(nlp, settings.optimizer, progress, random_states(), is_best,
                                  settings.before_to_disk)
            info["output_path"] = str(self.checkpoints.last)


def _batches(nlp: Language, settings: TrainingSettings, examples: Optional[List[Example]],
             progress: Progress) -> Iterator[Batch]:
    """Batches as spaCy's `create_train_batches` makes them: shuffling a list
    of indices draws the same permutations as shuffling the examples. A
    resumed run takes up its epoch's order and skips the batches already used."""
    epoch = progress.epoch
    order = progress.order
    resuming = progress.step >= 0
    if examples is not None and order is None:
        order = list(range(len(examples)))
    while settings.max_epochs < 1 or epoch != settings.max_epochs:
        if examples is not None:
            if not resuming:
                order = list(order)
                random.shuffle(order)
            epoch_examples = [examples[i] for i in order]
        else:
            epoch_examples = settings.train_corpus(nlp)
        skip = progress.batches_in_epoch if resuming else 0
        resuming = False
        for index, batch in enumerate(settings.batcher(epoch_examples)):
            if index >= skip:
                yield epoch, index, order, batch
        epoch += 1
