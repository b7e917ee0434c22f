"""Fine-tunes the generator's reader with LoRA and saves it as a plain model directory that
``realm serve generator --model DIR`` loads.

Each example is rendered exactly as the generator renders a short answer's prompt (the same
``PromptBuilder``, template, worked example and passage block), so the model learns the task it
is asked at serving time; the loss is on the answer and its end token only, and the language
model head runs only there (rows are padded on the left, so every answer ends its row), which
spares its 49k-wide logits at every prompt position (1.5 GiB of the peak at 8 a step). peft's LoRA
adapters (rank 16 on every linear layer: 3.5% of SmolLM2-135M's weights) train in the
transformers ``Trainer`` (checkpoints, resume, seeding, a GPU when present), and are merged into
the weights at the end, so serving needs neither peft nor an adapter file.
"""

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realm.app.training.corpus import TrainingInputError
from realm.app.training.reader_options import GeneratorOptions
from realm.app.training.reading import ReadingExample
from realm.app.training.staging import (
    CHECKPOINTS,
    EXAMPLES,
    STAGING_PREFIX,
    StagedModel,
    last_checkpoint,
    publish,
    trainer_arguments,
    training_outcome,
)
from realm.generator.models import pick_device, resolve
from realm.generator.pipeline import SHORT_ANSWER_TOKENS
from realm.generator.prompts import PromptBuilder, RetrievedPassage

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RECORD = "training.json"
# The prompt window while training: one passage and the worked example fit many times over.
CONTEXT_TOKENS = 2048


@dataclass(frozen=True, slots=True)
class TrainableGenerator:
    # transformers' models are typed loosely; this is a causal language model.
    model: Any
    tokenizer: "PreTrainedTokenizerBase"


def require_generator_packages() -> None:
    """LoRA needs peft, the examples a datasets.Dataset (the ``train`` extra)."""
    missing = [name for name in ("peft", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        raise TrainingInputError(
            f"training the generator needs {' and '.join(missing)}: pip install 'realm-rag[train]'"
        )


def load_generator(name_or_path: str, cache_dir: Path, device: str = "auto") -> TrainableGenerator:
    """The base model in float32 (what LoRA trains against), loaded before any example is made
    so that a model that cannot be trained fails at once, naming it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        target, is_local = resolve(name_or_path, cache_dir)
        config = AutoConfig.from_pretrained(target, local_files_only=is_local)
        if getattr(config, "is_encoder_decoder", False):
            raise TrainingInputError(
                f"--base-model {name_or_path} is an encoder-decoder model; only causal language "
                "models (the generator's chat models) can be trained"
            )
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=is_local)
        model: Any = AutoModelForCausalLM.from_pretrained(
            target, local_files_only=is_local, dtype=torch.float32
        )
    except TrainingInputError:
        raise
    except Exception as error:  # any loader failure: nothing to train
        raise TrainingInputError(
            f"--base-model {name_or_path!r} could not be loaded as a causal language model "
            f"({type(error).__name__}: {error})"
        ) from error
    if tokenizer.eos_token_id is None:
        raise TrainingInputError(
            f"--base-model {name_or_path!r} has no end-of-sequence token; a reader trained on "
            "it could not learn where an answer ends"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return TrainableGenerator(model.to(pick_device(device)), tokenizer)


def features(
    tokenizer: "PreTrainedTokenizerBase", examples: list[ReadingExample]
) -> dict[str, list[list[int]]]:
    """Token ids as the generator prompts them, with labels only on the answer and its end. An
    example whose passage does not fit the prompt window is left out (it would teach answering
    from nothing)."""
    prompts = PromptBuilder(tokenizer, CONTEXT_TOKENS)
    columns: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for example in examples:
        passage = RetrievedPassage(
            "", "", example.passage, 0, len(example.passage), 0.0, example.title
        )
        prompt = prompts.build("short", example.question, [passage], [], SHORT_ANSWER_TOKENS)
        if not prompt.passages:
            continue
        answer = list(tokenizer(example.answer, add_special_tokens=False)["input_ids"])
        answer.append(int(tokenizer.eos_token_id))
        ids = prompt.token_ids + answer
        columns["input_ids"].append(ids)
        columns["attention_mask"].append([1] * len(ids))
        columns["labels"].append([-100] * len(prompt.token_ids) + answer)
    return columns


def _answer_loss_trainer() -> type:
    """transformers' Trainer with a loss computed from the last positions only (see above)."""
    import torch
    from transformers import Trainer

    class AnswerLossTrainer(Trainer):
        # The loss below is divided by the answer tokens of the whole accumulated batch.
        loss_is_scaled_for_ga = True

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs.pop("labels")
            # Positions as if each row started at 0 (its padding is on the left).
            positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            keep = int((labels != -100).sum(dim=1).max()) + 1
            outputs = model(**inputs, position_ids=positions, logits_to_keep=keep)
            logits = outputs.logits[:, :-1, :].float()
            targets = labels[:, 1 - keep :]
            total = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            count = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
            loss = total / count
            return (loss, outputs) if return_outputs else loss

    return AnswerLossTrainer


class GeneratorBuilder(StagedModel[ReadingExample]):
    """One model directory in the making: staged beside ``output``, renamed into place whole."""

    example_type = ReadingExample

    def __init__(self, output: Path, resume: bool) -> None:
        self.output = output.absolute()
        if self.output.exists():
            raise TrainingInputError(
                f"--output {output} already exists; give a new directory (a trained model is "
                "never overwritten)"
            )
        self.staging = self.output.parent / f"{STAGING_PREFIX}{self.output.name}"
        unfinished = (self.staging / EXAMPLES).is_file()
        if resume and not unfinished:
            raise TrainingInputError(f"--resume: no interrupted training in {self.staging}")
        if not resume and self.staging.exists():
            raise TrainingInputError(
                f"an interrupted training of {output} is in {self.staging}: continue it with "
                "--resume, or remove that directory"
            )
        self.staging.mkdir(parents=True, exist_ok=resume)
        self.resumed = resume

    def train(
        self,
        generator: TrainableGenerator,
        examples: list[ReadingExample],
        options: GeneratorOptions,
    ) -> dict[str, Any]:
        """Runs (or resumes) LoRA training, then saves the merged model into staging."""
        from datasets import Dataset
        from peft import LoraConfig, get_peft_model
        from transformers import DataCollatorForSeq2Seq, TrainingArguments, set_seed

        set_seed(options.seed)  # the adapters' initial weights
        adapted: Any = get_peft_model(
            generator.model,
            LoraConfig(
                r=options.lora_rank,
                lora_alpha=2 * options.lora_rank,
                lora_dropout=0.05,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
        checkpoints = self.staging / CHECKPOINTS
        arguments = TrainingArguments(
            **trainer_arguments(checkpoints, options),
            # Batches of similar lengths pad less (padding was a fifth of a random batch).
            train_sampling_strategy="group_by_length",
        )
        # The tokenizer is saved as it came; it pads on the left only while training.
        generator.tokenizer.save_pretrained(str(self.staging))
        generator.tokenizer.padding_side = "left"
        trainer = _answer_loss_trainer()(
            model=adapted,
            args=arguments,
            train_dataset=Dataset.from_dict(features(generator.tokenizer, examples)),
            data_collator=DataCollatorForSeq2Seq(generator.tokenizer, label_pad_token_id=-100),
        )
        resume_from = last_checkpoint(checkpoints)
        started = time.monotonic()
        result = trainer.train(
            resume_from_checkpoint=None if resume_from is None else str(resume_from)
        )
        merged = adapted.merge_and_unload()
        merged.save_pretrained(str(self.staging))
        return training_outcome(result, started, str(merged.device), resume_from)

    def publish(self, record: dict[str, Any]) -> dict[str, Any]:
        """Writes the record, then renames the model into place (atomic: seen whole or not)."""
        return publish(self.staging, self.output, RECORD, record)
