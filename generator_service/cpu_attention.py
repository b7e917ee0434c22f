"""Attention for several query tokens over a cached, padded batch on a CPU, without copying keys.

Models with grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads) keep each
key/value head once in the cache. For one query token with a padding mask, transformers' SDPA path
folds the shared heads into the query; for several (the scheduler's drafted tokens, see
``prompt_lookup``) it copies every layer's keys and values to the full head count first, because
CUDA's kernels would otherwise fall back to a slow path. PyTorch's CPU kernel takes the grouped
heads as they are (``enable_gqa``): at full batches with drafted tokens the copies cost more than
the attention itself (figures in docs/benchmarks.md).

Registered under its own name in transformers' attention interface; other cases go to the stock
SDPA function unchanged.
"""

import logging
from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

_LOGGER = logging.getLogger(__name__)
IMPLEMENTATION = "realm_cpu_sdpa"


def _grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    groups = int(getattr(module, "num_key_value_groups", 1))
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    if groups > 1 and query.shape[2] > 1 and attention_mask is not None and plain:
        output = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            scale=scaling,
            enable_gqa=True,
        )
        return output.transpose(1, 2).contiguous(), None
    result: tuple[torch.Tensor, None] = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    return result


def use_grouped_cpu_attention(model: PreTrainedModel) -> bool:
    """Switches a CPU model that runs SDPA to the grouped kernel; returns whether it did."""
    if model.config._attn_implementation != "sdpa":
        return False
    AttentionInterface.register(IMPLEMENTATION, _grouped_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)
    try:
        model.set_attn_implementation(IMPLEMENTATION)
    except (ValueError, KeyError) as error:
        _LOGGER.info("keeping stock SDPA attention: %s", error)
        return False
    return bool(model.config._attn_implementation == IMPLEMENTATION)
