"""The running batch's key/value cache and attention mask: one row per sequence, left-padded to
a common length, the padding masked out.

Rows join (``add``), decode several positions a step (``extend``; ``mask_unused`` hides the
guesses a row did not keep and crops those no row kept), leave (``keep_rows``), and the cache is
rebuilt without masked-out positions when they pile up (``repack``). Everything here is tensor
bookkeeping; which rows exist and what they decode is the scheduler's.
"""

from typing import cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class KVBatch:
    """A ``DynamicCache`` and its mask, row ``i`` of both belonging to the same sequence."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def holes(self) -> int:
        """Positions the cache holds beyond what its longest row keeps (padding, rejected
        guesses): every step attends over them for nothing."""
        return int(self.mask.shape[1] - self.mask.sum(dim=1).max())

    def add(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Appends prefilled rows, left-padding whichever side is shorter."""
        length = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            keys, values = _kv(mine)
            their_keys, their_values = _kv(theirs)
            mine.keys = torch.cat([_left_pad(keys, length), _left_pad(their_keys, length)])
            mine.values = torch.cat([_left_pad(values, length), _left_pad(their_values, length)])
        self.mask = torch.cat([_left_pad(self.mask, length), _left_pad(mask, length)])

    def extend(self, width: int) -> torch.Tensor:
        """Opens ``width`` new positions on every row; returns their position ids, counted per
        row from the mask, so a row sees exactly the positions it would see alone."""
        device = self.mask.device
        positions = self.mask.sum(dim=1, keepdim=True) + torch.arange(width, device=device)
        opened = torch.ones((self.rows, width), dtype=torch.long, device=device)
        self.mask = torch.cat([self.mask, opened], dim=1)
        return positions

    def mask_unused(self, used: list[int], width: int) -> None:
        """Masks the step's input positions each row did not keep; crops those no row kept."""
        device = self.mask.device
        kept = torch.tensor(used, device=device).unsqueeze(1)
        self.mask[:, -width:] = (torch.arange(width, device=device) < kept).long()
        unused = width - max(used)
        if unused:
            self.cache.crop(-unused)
            self.mask = self.mask[:, :-unused]

    def keep_rows(self, keep: list[int]) -> None:
        """Drops the rows not in ``keep`` (non-empty), then the padding columns no remaining row
        needs."""
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first_used = int(mask.any(dim=0).nonzero()[0])
        self.mask = mask[:, first_used:]
        for layer in _layers(self.cache):
            keys, values = _kv(layer)
            layer.keys = keys.index_select(0, index)[:, :, first_used:, :]
            layer.values = values.index_select(0, index)[:, :, first_used:, :]

    def repack(self) -> None:
        """Rebuilds the cache with each row's kept positions moved right, in order, and only the
        left padding the longest row needs. The row that keeps the most sets the cache's length,
        but when rows take turns confirming more, or that row leaves, masked-out positions that
        no row needs stay in the cache and in every step's attention until this removes them."""
        kept = self.mask.sum(dim=1)
        length = int(kept.max())
        # Source column of each target column: a row's kept columns, in order, right-aligned;
        # the padding on their left reads column 0 and stays masked out.
        order = torch.argsort(self.mask, dim=1, stable=True)[:, -length:]
        mask = torch.arange(length, device=self.mask.device) >= (length - kept).unsqueeze(1)
        order = order.masked_fill(~mask, 0)
        for layer in _layers(self.cache):
            keys, values = _kv(layer)
            index = order[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            layer.keys = keys.gather(2, index)
            layer.values = values.gather(2, index)
        self.mask = mask.long()


def batchable(cache: DynamicCache) -> bool:
    """Whether every cache layer is a plain ``DynamicLayer`` that can be padded and stacked."""
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers; only caches whose layers are all DynamicLayer are batched."""
    return cast(list[DynamicLayer], cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise RuntimeError("a cache layer is empty after prefill; the model skipped a layer")
    return layer.keys, layer.values


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pads the sequence axis (-2 for cache tensors, -1 for masks) with zeros."""
    axis = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
