"""The decode cache as a ``transformers`` ``Cache``: one ``sisa.cache.LayerCache`` per layer.

``generate`` finds it in the model's output (``SISAForCausalLM.forward`` makes one
when ``use_cache`` is set) and hands it back at every step; beam search reorders it
through ``reorder_cache``. SISA layers write their ``LayerCache`` directly, so the
key/value ``update`` of ``transformers``' attention caches is not used.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..cache import LayerCache


class SISACacheLayer(CacheLayerMixin):
    """One layer: ``self.cache`` is the ``LayerCache`` (k, v, B_rot, g, scan state, pad mask)."""

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, capacity: int = 0):
        super().__init__()
        self.cache = LayerCache(capacity)

    def lazy_initialization(self, key_states=None, value_states=None) -> None:
        pass

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("SISA layers write their LayerCache directly (SISACache.layer_caches)")

    def get_seq_length(self) -> int:
        return self.cache.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cache.length + query_length, 0

    def reset(self) -> None:
        self.cache = LayerCache(self.cache.capacity)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.cache.select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.cache.select_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        bufs = list(self.cache._buf.values())
        if bufs:
            self.cache.select_batch(torch.arange(bufs[0].shape[0], device=bufs[0].device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SISACache cannot be cropped (the scan state is not invertible)")


class SISACache(Cache):
    """``num_layers`` SISACacheLayers; ``capacity`` preallocates that many tokens per layer."""

    def __init__(self, num_layers: int, capacity: int = 0):
        super().__init__(layers=[SISACacheLayer(capacity) for _ in range(num_layers)])

    @property
    def layer_caches(self) -> list[LayerCache]:
        """What ``SISAModel.forward(caches=...)`` takes."""
        return [layer.cache for layer in self.layers]
