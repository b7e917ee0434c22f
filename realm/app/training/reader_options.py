"""The options of ``realm train generator``, apart from the trainer: the command line reads them
to show its defaults, and must not import the generator (torch, transformers, and the
generator's Prometheus metrics, which would then appear in a retriever process's /metrics).
"""

from dataclasses import dataclass

from realm.app.training.corpus import TrainingInputError
from realm.app.training.staging import check_schedule

# Of the examples, this share teaches refusing (wikiqa-dev, docs/training.md: at 0.2 the reader
# refused 11 answerable questions of 160).
REFUSAL_SHARE = 0.1


@dataclass(frozen=True, slots=True)
class GeneratorOptions:
    """Defaults measured on wikiqa-dev on 2 CPU cores (docs/training.md): within 15 minutes."""

    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-4
    lora_rank: int = 16
    seed: int = 0
    checkpoint_steps: int = 10

    def __post_init__(self) -> None:
        check_schedule(self.epochs, self.learning_rate)
        if not 1 <= self.batch_size <= 1024:
            raise TrainingInputError(f"--batch-size {self.batch_size} must be in [1, 1024]")
        if not 1 <= self.lora_rank <= 256:
            raise TrainingInputError(f"--lora-rank {self.lora_rank} must be in [1, 256]")
