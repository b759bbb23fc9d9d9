"""The [training] block of a config as the training loop reads it: resolved once
per run into a `TrainingSettings`, so the loop names each setting as an
attribute instead of looking it up by string.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

from spacy.language import Language
from spacy.schemas import ConfigSchemaTraining
from spacy.training import Example
from spacy.training.loop import create_before_to_disk_callback
from spacy.util import registry, resolve_dot_names
from thinc.api import Optimizer, fix_random_seed, set_gpu_allocator

from .checkpoints import Progress

Corpus = Callable[[Language], Iterator[Example]]


@dataclass(frozen=True)
class TrainingSettings:
    """What `spacy_ita.training.loop.train` takes from [training], with the
    registered functions resolved (the fields of spaCy's ConfigSchemaTraining
    that the loop uses)."""

    train_corpus: Corpus
    dev_corpus: Corpus
    optimizer: Optimizer
    batcher: Callable
    dropout: Union[float, Iterator[float]]  # a rate, or a schedule of rates
    accumulate_gradient: int
    max_steps: int
    max_epochs: int
    eval_frequency: int
    patience: int
    frozen_components: List[str]
    annotating_components: List[str]
    score_weights: Dict[str, Optional[float]]
    logger: Callable
    before_to_disk: Callable[[Language], Language]
    before_update: Optional[Callable[[Language, Dict[str, Any]], None]]
    batch_size_scheduled: bool  # the batcher's size follows a schedule

    @classmethod
    def from_config(cls, config, use_gpu: int) -> "TrainingSettings":
        """The settings of an interpolated config, after seeding the random
        generators and choosing the GPU allocator as its [training] asks."""
        training = config["training"]
        if training["seed"] is not None:
            fix_random_seed(training["seed"])
        if use_gpu >= 0 and training["gpu_allocator"]:
            set_gpu_allocator(training["gpu_allocator"])
        resolved = registry.resolve(training, schema=ConfigSchemaTraining)
        train_corpus, dev_corpus = resolve_dot_names(
            config, [resolved["train_corpus"], resolved["dev_corpus"]])
        return cls(
            train_corpus=train_corpus, dev_corpus=dev_corpus,
            optimizer=resolved["optimizer"], batcher=resolved["batcher"],
            dropout=resolved["dropout"], accumulate_gradient=resolved["accumulate_gradient"],
            max_steps=resolved["max_steps"], max_epochs=resolved["max_epochs"],
            eval_frequency=resolved["eval_frequency"], patience=resolved["patience"],
            frozen_components=resolved["frozen_components"],
            annotating_components=resolved["annotating_components"],
            score_weights=resolved["score_weights"], logger=resolved["logger"],
            before_to_disk=create_before_to_disk_callback(resolved["before_to_disk"]),
            before_update=resolved["before_update"],
            batch_size_scheduled=not isinstance(training["batcher"].get("size", 0), (int, float)),
        )

    @property
    def resume_limits(self) -> Dict[str, Any]:
        """What `Checkpoints.restore` checks a checkpoint against."""
        return {"max_steps": self.max_steps, "max_epochs": self.max_epochs,
                "batch_size_schedule": self.batch_size_scheduled}

    def finished(self, progress: Progress) -> bool:
        """Whether `patience` or `max_steps` ends the run after its last step."""
        if self.patience and progress.results:
            # the earliest of equal best scores counts, as in spaCy's loop
            best_step = -max((score, -step) for score, step in progress.results)[1]
            if progress.step - best_step >= self.patience:
                return True
        return bool(self.max_steps) and progress.step >= self.max_steps
