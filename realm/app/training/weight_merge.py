"""Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): the saved model is a point on the
line between the base model's weights and the fine-tuned ones.

Fine-tuning on a few hundred examples moves a model far enough to forget part of what made it
good in general; its halfway point keeps both. On Cranfield (docs/training.md), through the
product, the halfway model gained +0.031 dense nDCG@10 where the fine-tuned one alone gained
+0.013.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The fine-tuned weights' share of the saved model: WiSE-FT's own choice, not tuned on an
# evaluated set (docs/training.md shows the others measured).
DEFAULT_MERGE_WEIGHT = 0.5

WeightSnapshot = dict[str, "torch.Tensor"]


def snapshot(module: "torch.nn.Module") -> WeightSnapshot:
    """A copy of ``module``'s weights, taken before training changes them in place."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def merge_into(module: "torch.nn.Module", base: WeightSnapshot, weight: float) -> None:
    """Sets ``module``'s weights to ``base + weight * (trained - base)``, in place. Integer
    buffers (position ids) are the same in both and are left alone."""
    import torch

    merged: WeightSnapshot = {}
    with torch.no_grad():
        for name, trained in module.state_dict().items():
            if trained.is_floating_point():
                start = base[name].to(trained.device, trained.dtype)
                merged[name] = torch.lerp(start, trained, weight)
    module.load_state_dict(merged, strict=False)
