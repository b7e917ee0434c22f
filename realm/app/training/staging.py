"""A trained model in the making, shared by both trainers: a staging directory that holds the
examples and the trainer's checkpoints, renamed into place once the model and its record are
written, so a model directory is either complete or not seen at all.

The examples are written once, before training, and read back by ``--resume``: a resumed run
trains on exactly the examples it started with, and a synthetic run does not make them twice.
"""

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Example = TypeVar("Example", bound=DataclassInstance)
else:
    Example = TypeVar("Example")

from realm.app.training.corpus import TrainingInputError
from realm.files import fsync_dir

EXAMPLES = "examples.jsonl"
CHECKPOINTS = "checkpoints"
STAGING_PREFIX = ".training-"
# The trainer writes a checkpoint's state file last.
_STATE = "trainer_state.json"
# Makes the examples (JSON rows) and a description of them for the record.
RowsMaker = Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]]


def check_schedule(epochs: float, learning_rate: float) -> None:
    """The bounds both trainers put on how long and how fast they train."""
    if not 0 < epochs <= 100:
        raise TrainingInputError(f"--epochs {epochs} must be in (0, 100]")
    if not 0 < learning_rate < 1:
        raise TrainingInputError(f"--learning-rate {learning_rate} must be in (0, 1)")


class Schedule(Protocol):
    """What both trainers' options say about the schedule (read-only: they are frozen)."""

    @property
    def epochs(self) -> float: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def seed(self) -> int: ...
    @property
    def checkpoint_steps(self) -> int: ...


def trainer_arguments(checkpoints: Path, schedule: Schedule) -> dict[str, Any]:
    """What both trainers pass to transformers' TrainingArguments: the schedule (10% warm-up),
    the seed, and one checkpoint kept, every ``checkpoint_steps``, for ``--resume``."""
    return {
        "output_dir": str(checkpoints),
        "num_train_epochs": schedule.epochs,
        "per_device_train_batch_size": schedule.batch_size,
        "learning_rate": schedule.learning_rate,
        "warmup_steps": 0.1,
        "seed": schedule.seed,
        "data_seed": schedule.seed,
        "save_strategy": "steps",
        "save_steps": schedule.checkpoint_steps,
        "save_total_limit": 1,
        "logging_steps": schedule.checkpoint_steps,
        "report_to": "none",
    }


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


def examples_once(
    staging: Path, resumed: bool, make: RowsMaker
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The examples a model trains on: made and written once, read back when resuming. The
    file's first line describes them; it is renamed into place whole."""
    path = staging / EXAMPLES
    if resumed:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines[1:]], json.loads(lines[0])
    rows, about = make()
    text = [json.dumps(about), *(json.dumps(row, ensure_ascii=False) for row in rows)]
    partial = path.with_suffix(".partial")
    partial.write_text("\n".join(text) + "\n", encoding="utf-8")
    partial.rename(path)
    return rows, about


def publish(staging: Path, final: Path, record_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Writes the record (with the model's name and time), then renames the staging directory
    to ``final``: the one atomic step after which the model exists."""
    full = {"version": final.name, "created": datetime.now(UTC).isoformat(), **record}
    (staging / record_name).write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(staging / CHECKPOINTS, ignore_errors=True)
    staging.rename(final)
    fsync_dir(final.parent)
    return full


class StagedModel(Generic[Example]):
    """What both trainers' builders share: the staging directory, its examples, discarding."""

    # The examples' dataclass: rows are written with asdict and read back with it.
    example_type: ClassVar[type[Any]]
    staging: Path
    resumed: bool

    def examples(
        self, make: Callable[[], tuple[list[Example], dict[str, Any]]]
    ) -> tuple[list[Example], dict[str, Any]]:
        """The examples this model trains on: made once, read back when resuming."""

        def rows() -> tuple[list[dict[str, Any]], dict[str, Any]]:
            made, about = make()
            return [asdict(example) for example in made], about

        written, about = examples_once(self.staging, self.resumed, rows)
        return [self.example_type(**row) for row in written], about

    def discard(self) -> None:
        """Removes a model that failed before training (a resumed one keeps its files)."""
        if not self.resumed:
            shutil.rmtree(self.staging, ignore_errors=True)


def training_outcome(
    result: Any, started: float, device: str, resumed_from: Path | None
) -> dict[str, Any]:
    """What the record says about a finished ``Trainer.train`` (``result`` is its output)."""
    return {
        "steps": result.global_step,
        "train_loss": round(float(result.training_loss), 4),
        "seconds": round(time.monotonic() - started, 1),
        "device": device,
        "resumed_from_checkpoint": resumed_from is not None,
    }
