"""Pseudo-queries for passages, written by the generator model (InPars / GPL-style synthetic
supervision): a collection with no labelled queries still gets (query, passage) pairs in its own
vocabulary and style.

The model runs in this process through transformers (the same loading as the generator service,
packaged GGUF included), greedy, so the same passages give the same queries.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from realm.generator.models import pick_device, resolve

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Passages are cut to this many tokens in the prompt: their opening says what they are about.
PASSAGE_TOKENS = 128
QUERY_TOKENS = 24
# A plain few-shot completion (InPars' format): a 135M chat model told to "write a query"
# describes the passage instead ("The passage provides ..."); shown examples, it writes queries.
# The examples are general knowledge, from no data set that is evaluated.
FEW_SHOT = (
    "Passage: The Golden Gate Bridge is a suspension bridge across the strait between San "
    "Francisco Bay and the Pacific Ocean. It opened in 1937.\n"
    "Query: when did the golden gate bridge open\n\n"
    "Passage: A B-tree keeps sorted keys in nodes with many children, so that a lookup reads few "
    "disk blocks. Databases use it for their indexes.\n"
    "Query: why do databases use b-trees for indexes\n\n"
)


@dataclass
class QueryWriter:
    """Writes one query per passage with a causal chat model."""

    # transformers' generate and to() are typed loosely; the model is a causal LM.
    model: Any
    tokenizer: "PreTrainedTokenizerBase"
    batch_size: int = 8

    @classmethod
    def load(cls, name_or_path: str, cache_dir: Path, device: str = "auto") -> "QueryWriter":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        target, is_local = resolve(name_or_path, cache_dir)
        chosen = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=is_local)
        tokenizer.padding_side = "left"  # generation continues every row from its last token
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = torch.float32 if chosen.type == "cpu" else torch.bfloat16
        model: Any = AutoModelForCausalLM.from_pretrained(
            target, local_files_only=is_local, dtype=dtype
        )
        model = model.to(chosen)
        model.eval()
        return cls(model, tokenizer)

    def write(
        self, passages: Sequence[str], advance: Callable[[int], None] = lambda n: None
    ) -> list[str]:
        """One query per passage, in order; an empty string where the model wrote none."""
        queries: list[str] = []
        for at in range(0, len(passages), self.batch_size):
            batch = passages[at : at + self.batch_size]
            queries.extend(self._write_batch(batch))
            advance(len(batch))
        return queries

    def _write_batch(self, passages: Sequence[str]) -> list[str]:
        import torch

        prompts = [self._prompt(passage) for passage in passages]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=QUERY_TOKENS,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=["\n"],
                tokenizer=self.tokenizer,
            )
        written = output[:, inputs["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(written, skip_special_tokens=True)
        return [clean_query(text) for text in texts]

    def _prompt(self, passage: str) -> str:
        ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"][:PASSAGE_TOKENS]
        cut = " ".join(str(self.tokenizer.decode(ids)).split())
        return f"{FEW_SHOT}Passage: {cut}\nQuery:"


def clean_query(text: str) -> str:
    """The first line, without quotes or a leading "Query:" the model may add."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    for label in ("search query:", "query:"):
        if line.lower().startswith(label):
            line = line[len(label) :]
    return line.strip().strip("\"'").strip()
