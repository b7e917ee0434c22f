"""The one typed place for the generator's knobs: model, retriever, limits and batching.

``GeneratorConfig`` is the source of ``realm serve generator``'s flags and environment variables.
"""

from dataclasses import dataclass
from pathlib import Path

from realm.channels import ConnectionOptions, check_token_transport
from realm.ports import GENERATOR_PORT
from realm.server import ServerOptions
from realm.settings import default_cache_dir, group, setting

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Tokens guessed from the prompt and checked per greedy row and decode step (0: off); see
# generator_service/prompt_lookup.py and the generation notes in docs/benchmarks.md.
DEFAULT_DRAFT_TOKENS = 4
MAX_DRAFT_TOKENS = 16


@dataclass(frozen=True, slots=True)
class GeneratorLimits:
    """Request limits enforced before any work is done (documented in docs/limits.md)."""

    max_question_chars: int = setting(2000, help="Longest question, in characters.")
    max_k: int = setting(20, help="Most passages a request may ask to retrieve.")
    default_k: int = setting(5, help="Passages retrieved for a request that asks for 0.")
    max_new_tokens: int = setting(1024, help="Largest max_new_tokens a request may ask for.")
    default_max_new_tokens: int = setting(
        256, help="max_new_tokens of a request that sets none (capped by --max-new-tokens)."
    )
    max_stop_sequences: int = setting(4, help="Stop sequences per request.")
    max_stop_chars: int = setting(64, help="Longest stop sequence, in characters.")
    max_fields: int = setting(16, help="Fields one extract request may name.")
    # Requests retrieving, generating or waiting for a batch slot; one more is refused at once
    # instead of queueing towards its deadline.
    max_pending_requests: int = setting(
        64, help="Requests admitted at once; one more gets RESOURCE_EXHAUSTED."
    )

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

    @property
    def effective_default_max_new_tokens(self) -> int:
        """The default capped by the maximum, so lowering --max-new-tokens alone is enough."""
        return min(self.default_max_new_tokens, self.max_new_tokens)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """Which model to run and where."""

    name_or_path: str = setting(
        DEFAULT_MODEL, flag="model", env="REALM_MODEL", help="Hugging Face name, path or .gguf."
    )
    device: str = setting("auto", help="auto (the first CUDA device, else the CPU), cpu, cuda:0…")
    # Small models on a CPU answer faster and no worse with a few passages than with thousands
    # of tokens.
    context_tokens: int = setting(
        2048, help="Prompt window in tokens (the smaller of this and the model's own)."
    )
    # Converted GGUF checkpoints are kept between runs, keyed by the file's sha256.
    cache_dir: Path = setting(
        default_factory=default_cache_dir,
        default_doc="`$XDG_CACHE_HOME/realm`, else `~/.cache/realm`",
        help="Where converted models are kept.",
    )
    max_batch_size: int = setting(
        8, help="Sequences decoded together; more concurrent requests wait for a slot."
    )
    # oneDNN-packed weights (generator_service/cpu_kernels.py) make decode steps faster at the
    # cost of a second copy of those weights; docs/benchmarks.md has the figures.
    pack_cpu_weights: bool = setting(True, help="On a CPU, pack linear weights for oneDNN.")
    # Greedy answers copy their passages; each decode step checks this many guessed tokens per
    # row and keeps those the model confirms, so one step can yield several tokens.
    draft_tokens: int = setting(
        DEFAULT_DRAFT_TOKENS, help="Tokens guessed from the prompt per decode step; 0: off."
    )

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

    retriever_target: str = setting(
        flag="retriever", env="REALM_RETRIEVER", help="Retriever address HOST:PORT."
    )
    server: ServerOptions = group(lambda: ServerOptions(port=GENERATOR_PORT, grace_seconds=30.0))
    model: ModelSettings = group(ModelSettings)
    limits: GeneratorLimits = group(GeneratorLimits)
    retrieval_timeout_s: float = setting(
        10.0,
        flag="retrieval-timeout",
        env="REALM_RETRIEVAL_TIMEOUT",
        help="Longest one retriever call may take; a caller's shorter deadline wins.",
    )
    retriever_tls_ca_file: Path | None = setting(
        None,
        flag="retriever-tls-ca",
        env="REALM_RETRIEVER_TLS_CA",
        help="PEM file to verify a TLS retriever with.",
    )
    retriever_tls_cert_file: Path | None = setting(
        None,
        flag="retriever-tls-cert",
        env="REALM_RETRIEVER_TLS_CERT",
        help="Client certificate for a mutual-TLS retriever.",
    )
    retriever_tls_key_file: Path | None = setting(
        None,
        flag="retriever-tls-key",
        env="REALM_RETRIEVER_TLS_KEY",
        help="Key of --retriever-tls-cert.",
    )
    retriever_token: str | None = setting(
        None, secret=True, help="Token the retriever requires of its callers."
    )
    allow_plaintext_token: bool = setting(
        False, help="Send the retriever's token over plaintext (only on a network you trust)."
    )

    def __post_init__(self) -> None:
        if not self.retriever_target.strip():
            raise ValueError("retriever_target is empty; give the retriever's HOST:PORT")
        if self.retrieval_timeout_s <= 0:
            raise ValueError(f"retrieval_timeout_s={self.retrieval_timeout_s} must be > 0")
        check_token_transport(self.retriever_target, self.retriever_connection())

    def retriever_connection(self) -> ConnectionOptions:
        """How to reach the retriever: TLS from the PEM files, the token (ValueError naming a
        file that cannot be read)."""
        return ConnectionOptions(
            tls=self.retriever_tls_ca_file is not None,
            tls_root_certificate=_pem(self.retriever_tls_ca_file),
            tls_client_certificate=_pem(self.retriever_tls_cert_file),
            tls_client_key=_pem(self.retriever_tls_key_file),
            bearer_token=self.retriever_token,
            allow_plaintext_token=self.allow_plaintext_token,
        )


def _pem(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
