"""The ``onnx`` encoder backend: a sentence-transformers model exported once to ONNX with int8
weights, run by onnxruntime on the CPU.

Why: encoding is where ingest spends its time, and on 2 cores the int8 export encodes passages
3.1x and queries 3.7x faster than float32 torch, within 0.005 nDCG@10 on Cranfield
(docs/benchmarks.md, "encode"; docs/quality.md, "Encoder backends"). Three choices make that:

- **int8 matrix products only, but one.** Weights of the MatMul nodes are quantized per output
  channel; activations are quantized on the fly (onnxruntime's dynamic quantization). Quantizing
  weights per tensor instead cut the mean cosine to the float32 vectors from 0.995 to 0.956. The
  first layer's feed-forward output stays float32: quantized, it cost 0.0053 of dense nDCG@10 on
  Cranfield; kept, 0.0009, for 7-12% of the speed (keeping every feed-forward output: 0.0005,
  for 29%).
- **No fused attention.** onnxruntime's BERT fusions made this model slower on the CPU, not faster.
- **One text per call**, each call on one thread, as many calls at once as there are cores.
  Dynamic quantization scales the activations of a whole call together, so in a batch a text's
  vector would depend on its neighbours (by up to 0.035 per coordinate, measured); alone, a text
  always gets the same vector, and there is no padding at all. Batches of 2-4 texts sorted by
  length were within 5% of it, and one call over two threads was 8-16% slower than two calls.

The export is made from the loaded torch model (with the TorchScript exporter of torch.onnx, which
needs no further package) and kept under ``cache_dir/encoders/<weights fingerprint>``, so it is
made once per model and machine; later loads check its sha256. sentence-transformers' own ONNX
backend needs optimum, which pins transformers below 5.
"""

import json
import logging
import os
import shutil
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

from realm.files import fsync_dir, sha256_file, write_json_atomic
from realm.retriever.embedder import (
    embedding_dimension,
    load_sentence_transformer,
    model_prefixes,
    weights_fingerprint,
    with_prefix,
)
from realm.retriever.topk import FloatArray
from realm.settings import default_cache_dir

_LOGGER = logging.getLogger(__name__)

# Bump when the export or its quantization changes: exports of another recipe are made anew.
RECIPE = "int8-matmul-per-channel-l0-ffn-float-v2"
# MatMul nodes left in float32, by the names torch.onnx gives BERT-family layers.
_FLOAT_NODES = ("encoder/layer.0/output/dense/MatMul",)
MODEL_FILE = "model.onnx"
DESCRIPTION_FILE = "encoder.json"
_OPSET = 17


class OnnxEncoder:
    """Normalised vectors from an int8 export; one text per call, one call per core."""

    def __init__(self, model_id: str, directory: Path, threads: int | None = None) -> None:
        description: dict[str, Any] = json.loads((directory / DESCRIPTION_FILE).read_text())
        actual = sha256_file(directory / MODEL_FILE)
        if actual != description["sha256"]:
            raise ValueError(
                f"{directory / MODEL_FILE} is damaged (sha256 {actual[:12]}, recorded "
                f"{description['sha256'][:12]}); delete {directory} to have it exported again"
            )
        self.model_id = model_id
        self.prefixes = model_prefixes(model_id)
        self.dimension = int(description["dimension"])
        self.fingerprint = f"onnx-{actual[:32]}"
        self.max_length = int(description["max_seq_length"])
        self._input_names: list[str] = description["input_names"]
        self._tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
        self._threads = threads or len(os.sched_getaffinity(0))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session: onnxruntime.InferenceSession = onnxruntime.InferenceSession(
            str(directory / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="onnx-encode")
        _LOGGER.info(
            "loaded embedding model %s (dim %d) as int8 ONNX from %s",
            model_id,
            self.dimension,
            directory,
        )

    def encode(self, texts: list[str]) -> FloatArray:
        return self._encode(with_prefix(self.prefixes.passage, texts))

    def encode_queries(self, texts: list[str]) -> FloatArray:
        return self._encode(with_prefix(self.prefixes.query, texts))

    def _encode(self, texts: list[str]) -> FloatArray:
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return vectors
        features = self._tokenizer(texts, truncation=True, max_length=self.max_length)
        inputs = [
            {name: np.asarray([features[name][row]], dtype=np.int64) for name in self._input_names}
            for row in range(len(texts))
        ]
        if len(inputs) == 1:  # a query: no hop to the pool
            vectors[0] = self._run(inputs[0])
        else:
            for row, vector in enumerate(self._pool.map(self._run, inputs)):
                vectors[row] = vector
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def _run(self, feeds: dict[str, np.ndarray]) -> FloatArray:
        output: FloatArray = self._session.run(None, feeds)[0][0]
        return output


def load_onnx_encoder(model_id: str, cache_dir: Path | None = None) -> OnnxEncoder:
    """The int8 export of ``model_id``, made on first use and kept in ``cache_dir``."""
    model = load_sentence_transformer(model_id, device="cpu")
    key = weights_fingerprint(model)[:32]
    directory = (cache_dir or default_cache_dir()) / "encoders" / f"{key}-{RECIPE}"
    if not (directory / DESCRIPTION_FILE).exists():
        export(model, model_id, directory)
    del model  # the torch weights are not needed once the export exists
    return OnnxEncoder(model_id, directory)


def export(model: SentenceTransformer, model_id: str, directory: Path) -> None:
    """Writes the int8 export, its tokenizer and description into ``directory``, atomically:
    it is made in a sibling directory and renamed, so a crash or a second process exporting at
    the same time never leaves half an export under that name."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}-{uuid.uuid4().hex}")
    staging.mkdir()
    try:
        _LOGGER.info("exporting %s to int8 ONNX in %s (once per model)", model_id, directory)
        input_names = _export_float(model, staging / "float.onnx")
        _quantize(staging / "float.onnx", staging / MODEL_FILE)
        (staging / "float.onnx").unlink()
        model.tokenizer.save_pretrained(str(staging / "tokenizer"))
        write_json_atomic(
            staging / DESCRIPTION_FILE,
            {
                "model_id": model_id,
                "recipe": RECIPE,
                "dimension": embedding_dimension(model, model_id),
                "max_seq_length": model.max_seq_length,
                "input_names": input_names,
                "sha256": sha256_file(staging / MODEL_FILE),
            },
        )
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / DESCRIPTION_FILE).exists():
                raise
            # Another process finished the same export first: keep its copy.
        fsync_dir(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_float(model: SentenceTransformer, path: Path) -> list[str]:
    """The whole sentence-transformers pipeline (transformer, pooling, any dense layer) as one
    float32 graph from token ids to a sentence vector; returns its input names."""
    sample = model.tokenizer(["a short text", "and a second, longer one"], padding=True)
    input_names = [
        name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample
    ]
    tensors = tuple(torch.tensor(sample[name]) for name in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in input_names}
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated for the torch.export one, which needs
        # onnxscript; this one still ships and its output is checked against torch in tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceGraph(model, input_names).eval(),
            tensors,
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=_OPSET,
        )
    return input_names


class SentenceGraph(torch.nn.Module):
    """Positional tensors in, the model's ``sentence_embedding`` out: the form torch.onnx.export
    traces."""

    def __init__(self, model: SentenceTransformer, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, tensors, strict=True))
        embedding: torch.Tensor = self.model(features)["sentence_embedding"]
        return embedding


def _quantize(source: Path, target: Path) -> None:
    root = logging.getLogger()
    level = root.level
    # The quantizer logs a line per tensor on the root logger, and advice meant for image
    # models; a start-up log needs neither.
    root.setLevel(max(level, logging.ERROR))
    try:
        _int8_matmuls(source, target)
    finally:
        root.setLevel(level)


def _int8_matmuls(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept_float = [
        node.name
        for node in onnx.load(str(source), load_external_data=False).graph.node
        if node.op_type == "MatMul" and node.name.endswith(_FLOAT_NODES)
    ]
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=kept_float,
        # The exported graph has nodes whose types shape inference leaves open.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
