"""Faster linear layers for decoding on a CPU: weights pre-packed for oneDNN.

Decoding multiplies a handful of rows (one per sequence in the batch) by every weight matrix.
MKL's GEMM repacks the weight on every such call, so batching gained little. oneDNN can pack
each weight once, at load time, into the blocked layout its kernels read: decode steps and
prefills get faster, most at full batches, and the logits agree to float rounding (figures in
docs/benchmarks.md). These are the same oneDNN operators PyTorch's own compiler uses for
frozen CPU models; where they are missing, the model is left as it is.
"""

import logging

import torch

_LOGGER = logging.getLogger(__name__)


def packed_linear_available() -> bool:
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight packed once for oneDNN. ``weight`` still points at the
    original parameter, so tied embeddings and code that reads it keep working."""

    def __init__(self, linear: torch.nn.Linear, batch_hint: int) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [None], "")
        result: torch.Tensor = out.reshape(*x.shape[:-1], self.out_features)
        return result


def pack_linear_layers(model: torch.nn.Module, batch_hint: int) -> int:
    """Replaces every float32 ``nn.Linear`` on the CPU by a ``PackedLinear``; returns how many."""
    if not packed_linear_available():
        _LOGGER.info("oneDNN packed linear kernels are not available; using the model as is")
        return 0
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is torch.nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
            ):
                setattr(parent, name, PackedLinear(child, batch_hint))
                replaced += 1
    return replaced
