"""Prompt templates for the three tasks, and packing passages into the model's token budget.

Every instruction the model sees is in ``TEMPLATES``, so changing how ReaLM asks is a one-place
edit. Passages are numbered ``[1]…[n]`` best-first and added while they fit: the budget is the
context window minus the room reserved for the answer, measured in the model's own tokens on the
fully rendered prompt (chat template included), not estimated from characters.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from realm.errors import InvalidArgument

Task = Literal["answer", "summarize", "extract"]
# The template a request is rendered with: its task, and for answers the answer style.
PromptKind = Literal["short", "sentence", "summarize", "extract"]


@dataclass(frozen=True, slots=True)
class RetrievedPassage:
    """A passage as the retriever returned it."""

    doc_id: str
    passage_id: str
    text: str
    start: int
    end: int
    score: float
    title: str


@dataclass(frozen=True, slots=True)
class Template:
    system: str
    user: str  # formatted with {passages}, {question} and {fields}
    # Earlier turns shown before the request: (user, assistant) pairs, user formatted like
    # ``user``. One worked example keeps a small model to the answer's form better than rules.
    examples: tuple[tuple[dict[str, str], str], ...] = ()


_SHORT_EXAMPLE = (
    {
        "passages": "[1] Hamlet: Hamlet is a tragedy written by William Shakespeare between 1599 "
        "and 1601.",
        "question": "Who wrote Hamlet?",
    },
    "William Shakespeare",
)

TEMPLATES: dict[PromptKind, Template] = {
    # SmolLM2-135M answered best with the instructions next to the question (a system prompt
    # full of rules made it answer "The answer to this question is:"), and one example turn.
    "short": Template(
        system="You are a helpful assistant.",
        user=(
            "Passages:\n{passages}\n\nAnswer the question with a few words copied from the "
            "passages.\nQuestion: {question}"
        ),
        examples=(_SHORT_EXAMPLE,),
    ),
    "sentence": Template(
        system="You are a helpful assistant.",
        user=(
            "Use only these passages to answer the question. If they do not contain the "
            "answer, say that you don't know.\n\n{passages}\n\nQuestion: {question}\n"
            "Answer in one or two sentences and cite the passage number like [1]."
        ),
    ),
    "summarize": Template(
        system=(
            "You summarize what the numbered passages say about a topic, using only the "
            "passages. Cite each statement with its passage number in square brackets, like "
            "[2]. If the passages say nothing about the topic, say so."
        ),
        user="Passages:\n{passages}\n\nTopic: {question}\n\nWrite a short summary.",
    ),
    # One field per generation; the answer is forced to start with "{field}:", so the prompt
    # ends like a form waiting to be filled (what a small model completes most reliably).
    "extract": Template(
        system=(
            "You fill in a form from the numbered passages. Use only the passages. Write "
            "unknown when they do not say."
        ),
        user="Passages:\n{passages}\n\nForm about: {question}\n{fields}:",
    ),
}
NO_CONTEXT = Template(
    system=(
        "No reference passages are available. Answer briefly from general knowledge and say so "
        "when you are not sure."
    ),
    user="{question}",
)


@dataclass(frozen=True, slots=True)
class Prompt:
    """The token ids to generate from, the passages they number, and text forced to start the
    answer (a field's name for extraction, so even a small model keeps to the format)."""

    token_ids: list[int]
    passages: list[RetrievedPassage]
    answer_prefix: str


def passage_block(number: int, passage: RetrievedPassage) -> str:
    title = f"{passage.title}: " if passage.title else ""
    return f"[{number}] {title}{' '.join(passage.text.split())}"


class PromptBuilder:
    """Renders prompts for one tokenizer; uses its chat template when it has one."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, context_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.context_tokens = context_tokens
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def build(
        self,
        kind: PromptKind,
        question: str,
        passages: Sequence[RetrievedPassage],
        fields: Sequence[str],
        max_new_tokens: int,
        with_context: bool = True,
        prefix: str = "",
    ) -> Prompt:
        template = TEMPLATES[kind] if with_context else NO_CONTEXT
        budget = self.context_tokens - max_new_tokens
        base = self._render(template, question, [], fields, prefix)
        if len(base) > budget:
            raise InvalidArgument(
                f"parameters.max_new_tokens={max_new_tokens} leaves {budget} of the model's "
                f"{self.context_tokens} context tokens for a prompt that needs {len(base)}; "
                "lower max_new_tokens or shorten the question"
            )
        chosen: list[RetrievedPassage] = []
        used = len(base)
        for passage in passages if with_context else ():
            # Counting each block alone is within a few tokens of the joined prompt; the exact
            # check on the rendered prompt below settles the difference.
            cost = len(self._encode(passage_block(len(chosen) + 1, passage) + "\n"))
            if used + cost <= budget:
                chosen.append(passage)
                used += cost
        ids = self._render(template, question, chosen, fields, prefix)
        while chosen and len(ids) > budget:
            chosen.pop()
            ids = self._render(template, question, chosen, fields, prefix)
        return Prompt(token_ids=ids, passages=chosen, answer_prefix=prefix)

    def _render(
        self,
        template: Template,
        question: str,
        passages: Sequence[RetrievedPassage],
        fields: Sequence[str],
        prefix: str,
    ) -> list[int]:
        numbered = "\n".join(passage_block(i, p) for i, p in enumerate(passages, start=1))
        user = template.user.format(
            passages=numbered or "(none)", question=question, fields=", ".join(fields)
        )
        turns = [
            (template.user.format(fields=", ".join(fields), **example), answer)
            for example, answer in template.examples
        ]
        if self.chat:
            messages = [{"role": "system", "content": template.system}]
            for example, answer in turns:
                messages += [
                    {"role": "user", "content": example},
                    {"role": "assistant", "content": answer},
                ]
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return self._encode(str(text) + prefix)
        shown = "".join(f"{example}\n\nAnswer: {answer}\n\n" for example, answer in turns)
        return self._encode(f"{template.system}\n\n{shown}{user}\n\nAnswer: {prefix}", special=True)

    def _encode(self, text: str, special: bool = False) -> list[int]:
        # A rendered chat template already carries its special tokens; plain prompts get the
        # tokenizer's own (e.g. T5's end-of-sequence marker).
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
