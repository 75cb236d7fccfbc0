"""The decode cache as a ``transformers`` ``Cache``: one ``sisa.cache.LayerCache`` per layer.

``generate`` finds it in the model's output (``SISAForCausalLM.forward`` makes one
when ``use_cache`` is set) and hands it back at every step; beam search reorders it
through ``reorder_cache``; assisted and prompt-lookup decoding drop rejected draft
tokens through ``crop`` (``LayerCache.crop`` recovers the scan state at the shorter
length). SISA layers write their ``LayerCache`` directly, so the key/value
``update`` of ``transformers``' attention caches is not used.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..cache import LayerCache


class SISACacheLayer(CacheLayerMixin):
    """One layer: ``self.cache`` is the ``LayerCache`` (k, v, B_rot, g, scan state, pad mask)."""

    is_compileable = False
    is_croppable = True
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
        """Drop the last ``-tokens_to_remove`` tokens (a negative int or 0, as transformers'
        DynamicLayer takes it)."""
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int) or tokens_to_remove > 0:
            raise ValueError(f"tokens_to_remove must be an int <= 0 (minus the number of tokens to drop), "
                             f"got {tokens_to_remove!r}")
        if -tokens_to_remove > self.cache.length:
            raise ValueError(f"cannot drop {-tokens_to_remove} tokens: the cache holds {self.cache.length}")
        self.cache.crop(self.cache.length + tokens_to_remove)


class SISACache(Cache):
    """``num_layers`` SISACacheLayers; ``capacity`` preallocates that many tokens per layer."""

    def __init__(self, num_layers: int, capacity: int = 0):
        super().__init__(layers=[SISACacheLayer(capacity) for _ in range(num_layers)])

    @property
    def layer_caches(self) -> list[LayerCache]:
        """What ``SISAModel.forward(caches=...)`` takes."""
        return [layer.cache for layer in self.layers]
