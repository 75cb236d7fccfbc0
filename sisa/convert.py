"""Load checkpoints written by the paper's reference code (docs/design.md section 2).

The paper keeps the attention projections directly on each block
(``layers.{i}.W_Q.weight``); ``SISAModel`` nests them under ``layers.{i}.attn``.
Everything else already has the same name.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "W_B", "W_C", "alpha_proj", "theta_proj", "lambda_raw")
_PATTERN = re.compile(r"^layers\.(\d+)\.(%s)(\..+)?$" % "|".join(_ATTN))


def convert_reference_state_dict(sd: Mapping) -> dict:
    """Map a state dict with the paper's parameter names onto SISAModel's.

    sd: a mapping of str names to tensors (a TypeError names the argument or the key
    otherwise). A separate ``lm_head.weight`` (the tied head) is dropped after
    checking it equals ``embed.weight``; unknown keys raise KeyError so nothing is
    silently lost. The tensors are passed through, not copied.
    """
    if not isinstance(sd, Mapping):
        raise TypeError(f"sd (the state dict) must be a mapping of names to tensors, got {type(sd).__name__}")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise TypeError(f"sd (the state dict) must have str keys, got {type(key).__name__} {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"sd[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
    out = {}
    for key, value in sd.items():
        m = _PATTERN.match(key)
        if m:
            out[f"layers.{m.group(1)}.attn.{m.group(2)}{m.group(3) or ''}"] = value
        elif key == "lm_head.weight":
            if "embed.weight" in sd and not sd["embed.weight"].equal(value):
                raise ValueError("lm_head.weight differs from embed.weight, but SISAModel ties them")
        elif re.match(r"^(embed\.weight|final_norm\.weight|layers\.\d+\.(attn_norm|ffn_norm)\.weight"
                      r"|layers\.\d+\.ffn\.(w_gate|w_up|w_down)\.weight)$", key):
            out[key] = value
        else:
            raise KeyError(f"unexpected key in the reference state dict: {key!r}")
    return out
