"""The one typed place for the generator's knobs: model, retriever, limits and batching."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from realm.channels import ConnectionOptions
from realm.server import ServerOptions

DEFAULT_PORT = 50052
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Tokens guessed from the prompt and checked per greedy row and decode step (0: off); see
# generator_service/prompt_lookup.py and the generation notes in docs/benchmarks.md.
DEFAULT_DRAFT_TOKENS = 4
MAX_DRAFT_TOKENS = 16


def default_cache_dir() -> Path:
    """``$REALM_CACHE_DIR``, else ``$XDG_CACHE_HOME/realm``, else ``~/.cache/realm``."""
    explicit = os.environ.get("REALM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "realm"


@dataclass(frozen=True, slots=True)
class GeneratorLimits:
    """Request limits enforced before any work is done (documented in docs/limits.md)."""

    max_question_chars: int = 2000
    max_k: int = 20
    default_k: int = 5
    max_new_tokens: int = 1024
    default_max_new_tokens: int = 256
    max_stop_sequences: int = 4
    max_stop_chars: int = 64
    max_fields: int = 16
    # Requests admitted at once (retrieving, generating or waiting for a batch slot); one more is
    # refused with RESOURCE_EXHAUSTED at once instead of queueing towards its deadline.
    max_pending_requests: int = 64

    def __post_init__(self) -> None:
        for name in (
            "max_question_chars",
            "max_k",
            "default_k",
            "max_new_tokens",
            "default_max_new_tokens",
            "max_pending_requests",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.default_k > self.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds max_k={self.max_k}")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"default_max_new_tokens={self.default_max_new_tokens} exceeds "
                f"max_new_tokens={self.max_new_tokens}"
            )


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Which model to run and where."""

    name_or_path: str = DEFAULT_MODEL
    # "auto" picks the first CUDA device when there is one, else the CPU.
    device: str = "auto"
    # The prompt window used, in tokens: the smaller of this and the model's own limit. Small
    # models on a CPU answer faster and no worse with a few passages than with thousands of tokens.
    context_tokens: int = 2048
    # Where converted GGUF checkpoints are kept between runs (keyed by the file's sha256).
    cache_dir: Path = field(default_factory=default_cache_dir)
    # Sequences decoded together at most; more concurrent requests wait for a free slot.
    max_batch_size: int = 8
    # On a CPU, pack linear weights once for oneDNN (generator_service/cpu_kernels.py): decode
    # steps at batch 8 take ~30% less time, at the cost of a second copy of those weights.
    pack_cpu_weights: bool = True
    # Greedy answers copy their passages; each decode step checks this many guessed tokens per
    # row and keeps those the model confirms, so one step can yield several tokens.
    draft_tokens: int = DEFAULT_DRAFT_TOKENS

    def __post_init__(self) -> None:
        if self.context_tokens < 256:
            raise ValueError(f"context_tokens={self.context_tokens} is below 256")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size={self.max_batch_size} must be >= 1")
        if not 0 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(
                f"draft_tokens={self.draft_tokens} is outside 0..{MAX_DRAFT_TOKENS}; "
                "0 turns drafting off"
            )


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything the generator needs to start, validated before anything binds or loads."""

    retriever_target: str
    server: ServerOptions = field(default_factory=lambda: ServerOptions(port=DEFAULT_PORT))
    model: ModelSettings = field(default_factory=ModelSettings)
    limits: GeneratorLimits = field(default_factory=GeneratorLimits)
    # Upper bound for one retriever call; a caller's shorter deadline wins.
    retrieval_timeout_s: float = 10.0
    # TLS and bearer token for calls to the retriever.
    retriever_connection: ConnectionOptions = field(default_factory=ConnectionOptions)

    def __post_init__(self) -> None:
        if not self.retriever_target.strip():
            raise ValueError("retriever_target is empty; give the retriever's HOST:PORT")
        if self.retrieval_timeout_s <= 0:
            raise ValueError(f"retrieval_timeout_s={self.retrieval_timeout_s} must be > 0")
