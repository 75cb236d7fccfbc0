"""Load checkpoints written by the paper's reference code (SPEC.md section 2).

The paper keeps the attention projections directly on each block
(``layers.{i}.W_Q.weight``); ``SISAModel`` nests them under ``layers.{i}.attn``.
Everything else already has the same name.
"""
from __future__ import annotations

import re

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "W_B", "W_C", "alpha_proj", "theta_proj", "lambda_raw")
_PATTERN = re.compile(r"^layers\.(\d+)\.(%s)(\..+)?$" % "|".join(_ATTN))


def convert_reference_state_dict(sd: dict) -> dict:
    """Map a state dict with the paper's parameter names onto SISAModel's.

    A separate ``lm_head.weight`` (the tied head) is dropped after checking it equals
    ``embed.weight``; unknown keys raise KeyError so nothing is silently lost.
    """
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
