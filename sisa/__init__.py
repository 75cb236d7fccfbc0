"""sisa: SSM-Informed Softmax Attention, exact and fast.

Functional ops (layout batch, seqlen, heads, dim):
    sisa_attention(q, k, v, C, B, log_alpha, theta, lam, *, softmax_scale=None, backend="auto")
    ssm_importance_scan(C, B, log_alpha, theta, *, initial_state=None, backend="auto")
Modules: SISAAttention, SISAConfig, SISAModel. See README.md and docs/design.md (the maths, the kernels, the validation rules).
"""
from .backends import available_backends
from .ops import sisa_attention, ssm_importance_scan
from .sdpa import paper_sdpa_attention
from . import naive
from .layer import SISAAttention
from .model import SISAConfig, SISAModel, matched_d_ff, param_groups
from .convert import convert_reference_state_dict

__all__ = [
    "sisa_attention", "ssm_importance_scan", "paper_sdpa_attention", "available_backends",
    "naive", "SISAAttention", "SISAConfig", "SISAModel", "matched_d_ff", "param_groups",
    "convert_reference_state_dict",
]
__version__ = "0.1.0"
