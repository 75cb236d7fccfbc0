"""sisa: SSM-Informed Softmax Attention, exact and fast.

Functional ops (layout batch, seqlen, heads, dim):
    sisa_attention(q, k, v, C, B, log_alpha, theta, lam, *, softmax_scale=None, backend="auto")
    ssm_importance_scan(C, B, log_alpha, theta, *, initial_state=None, backend="auto")
flash-attn-shaped faces (sisa.flash): sisa_attn_func, sisa_attn_varlen_func, sisa_attn_with_kvcache.
Modules: SISAAttention, SISAConfig, SISAModel. See README.md and docs/design.md (the maths, the kernels, the validation rules).
Fallbacks and notices go to the ``logging.getLogger("sisa")`` logger.
"""
import logging

from .backends import available_backends
from .ops import sisa_attention, ssm_importance_scan
from .sdpa import paper_sdpa_attention
from . import naive, _compile  # _compile: the custom ops torch.compile traces
from .flash import sisa_attn_func, sisa_attn_varlen_func, sisa_attn_with_kvcache
from .layer import SISAAttention
from .model import SISAConfig, SISAModel, matched_d_ff, param_groups
from .convert import convert_reference_state_dict

__all__ = [
    "sisa_attention", "ssm_importance_scan", "paper_sdpa_attention", "available_backends",
    "sisa_attn_func", "sisa_attn_varlen_func", "sisa_attn_with_kvcache",
    "naive", "SISAAttention", "SISAConfig", "SISAModel", "matched_d_ff", "param_groups",
    "convert_reference_state_dict",
]
__version__ = "0.1.0"     # the one source: pyproject.toml reads it

logging.getLogger("sisa").addHandler(logging.NullHandler())
