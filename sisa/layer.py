"""The paper's SISA attention layer (docs/design.md section 2) as a drop-in nn.Module."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .cache import LayerCache, cached_attention
from .naive import rotate_pairs, state_dtype
from .ops import attention_from_scan, sisa_attention, ssm_importance_scan
from .varlen import check_cu_seqlens, positions as packed_positions


BACKEND_NAMES = ("auto", "naive", "sdpa", "triton")


_QKV = ("W_Q", "W_K", "W_V")
_SSM = ("W_C", "W_B", "alpha_proj", "theta_proj")
# device type -> the fewest rows (b * t) that fuse; a device not listed never fuses. On a
# CPU (one thread, d_model 512, 128-2048 rows) the separate products measured as fast
# or faster than one fused product plus the weights' copy, so it is not listed; on CUDA
# one launch replaces seven (not measured here: no GPU), below 64 rows (decoding) the
# copy would outweigh it.
FUSE_MIN_ROWS = {"cuda": 64}


def _plain_linear(m) -> bool:
    """A bare nn.Linear whose call is F.linear(x, weight, bias): no subclass or wrapper
    (PEFT's LoRA layers, parametrizations), no hooks."""
    return type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks)


def fused_linear(x: torch.Tensor, linears) -> list:
    """[m(x) for m in linears], the plain nn.Linear ones (``_plain_linear``) as one
    F.linear over their concatenated weights and biases, split after (equal within
    float rounding: the same dot products, blocked differently by the matmul);
    the others module by module. x (..., d_in) -> [(..., d_out_i)], views for the
    fused ones. Only on the devices in FUSE_MIN_ROWS, with at least that many rows."""
    fuse = [i for i, m in enumerate(linears) if _plain_linear(m)]
    min_rows = FUSE_MIN_ROWS.get(x.device.type)
    if len(fuse) < 2 or min_rows is None or x.numel() < min_rows * x.shape[-1]:
        return [m(x) for m in linears]
    mods = [linears[i] for i in fuse]
    if len({(m.weight.dtype, m.weight.device) for m in mods}) > 1:
        return [m(x) for m in linears]
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])
    y = F.linear(x, torch.cat([m.weight for m in mods]), bias)
    out = dict(zip(fuse, y.split([m.out_features for m in mods], dim=-1)))
    return [out[i] if i in out else m(x) for i, m in enumerate(linears)]


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (a bool is not an int); else a TypeError or
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_real(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with allow_zero; a bool is not a number);
    else a TypeError or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def check_attention_config(d_model, n_heads, d_state, n_kv_heads, rope_base, backend, use_ssm) -> int:
    """Validate SISAAttention's arguments (SISAConfig's too); returns n_kv_heads, None
    meaning n_heads. Errors name the argument; the backend is checked by name only
    (whether it runs on a device is known at the first forward)."""
    check_int("d_model", d_model, 1)
    check_int("n_heads", n_heads, 1)
    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    if (d_model // n_heads) % 2:
        raise ValueError(f"the head dim d_model / n_heads = {d_model} / {n_heads} = {d_model // n_heads} "
                         "must be even (RoPE turns pairs of dims)")
    n_kv_heads = n_heads if n_kv_heads is None else check_int("n_kv_heads", n_kv_heads, 1)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    if not isinstance(use_ssm, bool):
        raise TypeError(f"use_ssm must be True or False, got {type(use_ssm).__name__} {use_ssm!r}")
    if use_ssm:
        check_int("d_state", d_state, 2)
        if d_state % 2:
            raise ValueError(f"d_state must be even and >= 2, got {d_state}")
    check_real("rope_base", rope_base)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {BACKEND_NAMES}, got {type(backend).__name__} {backend!r}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}, got {backend!r}")
    return n_kv_heads


def rope(x: torch.Tensor, base: float = 10000.0, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Interleaved rotary embedding: pair m of position p turns by p * base^(-2m/d).

    x: (b, t, h, d); positions: (t,) or per row (b, t) (default 0..t-1) -> same shape
    and dtype as x (angles in float32; float64 for float64 x).
    """
    t, d = x.shape[1], x.shape[-1]
    sd = state_dtype(x.dtype)
    if positions is None:
        positions = torch.arange(t, device=x.device)
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=sd) / d)
    phi = (positions.to(sd)[..., None] * inv_freq)[..., None, :]     # (t, 1, d/2) or (b, t, 1, d/2)
    if phi.dim() == 3:
        phi = phi[None]
    return rotate_pairs(x, phi).to(x.dtype)


def _plain_attention(q, k, v):
    """Causal softmax attention, the s queries being the last s of k's t positions.
    q (b, s, h, d); k, v (b, t, h, d) -> (b, s, h, d)."""
    s, t = q.shape[1], k.shape[1]
    mask = None
    if s not in (1, t):
        from torch.nn.attention.bias import causal_lower_right   # here: it imports torch._dynamo (seconds)
        mask = causal_lower_right(s, t)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, is_causal=(s == t and s > 1))
    return o.transpose(1, 2)


class SISAAttention(nn.Module):
    """Causal self-attention with the SISA score bias.

    forward(x (b, t, d_model)) -> (b, t, d_model). Heads h, head dim d = d_model / h
    (even), kv heads hk = n_kv_heads (None: h; GQA when hk < h), n = d_state (even).
    With use_ssm=False it is plain causal attention with RoPE (the Transformer
    baseline) and has no SSM parameters. backend: "auto", "naive", "sdpa" or "triton".
    Bad arguments raise a ValueError or TypeError naming them, here, not at the first
    forward. Parameter names follow the paper's code (W_Q ... lambda_raw).
    """

    def __init__(self, d_model, n_heads, d_state=16, n_kv_heads=None, rope_base=10000.0,
                 backend="auto", use_ssm=True):
        super().__init__()
        n_kv_heads = check_attention_config(d_model, n_heads, d_state, n_kv_heads, rope_base, backend, use_ssm)
        self.d_model = d_model
        self.n_heads, self.n_kv_heads, self.d_state = n_heads, n_kv_heads, d_state
        self.head_dim = d_model // n_heads
        self.rope_base, self.backend, self.use_ssm = rope_base, backend, use_ssm
        kv = n_kv_heads * self.head_dim
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, kv, bias=False)
        self.W_V = nn.Linear(d_model, kv, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        if use_ssm:
            self.W_B = nn.Linear(d_model, n_heads * d_state, bias=False)
            self.W_C = nn.Linear(d_model, n_heads * d_state, bias=False)
            self.alpha_proj = nn.Linear(d_model, n_heads)
            self.theta_proj = nn.Linear(d_model, n_heads * d_state // 2, bias=False)
            self.lambda_raw = nn.Parameter(torch.full((n_heads,), -1.0))
        self.reset_parameters()

    def reset_parameters(self):
        """The paper's initialisation: N(0, 0.02) projections, theta N(0, 0.01),
        decay bias -5 (half-life ~100 tokens), lambda_raw -1 (lam ~ 0.313)."""
        for lin in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(lin.weight, std=0.02)
        if self.use_ssm:
            for lin in (self.W_B, self.W_C, self.alpha_proj):
                nn.init.normal_(lin.weight, std=0.02)
            nn.init.constant_(self.alpha_proj.bias, -5.0)
            nn.init.normal_(self.theta_proj.weight, std=0.01)
            with torch.no_grad():
                self.lambda_raw.fill_(-1.0)

    def _apply(self, fn, recurse=True):
        # lam stays float32 when the module is cast to 16 bits (the paper keeps it so).
        super()._apply(fn, recurse)
        if self.use_ssm and self.lambda_raw.dtype in (torch.float16, torch.bfloat16):
            self.lambda_raw.data = self.lambda_raw.data.float()
        return self

    def lam(self) -> torch.Tensor:
        """Per-head SSM weight softplus(lambda_raw): (h,) float32 (float64 in a float64 model)."""
        return F.softplus(self.lambda_raw)

    def projections(self, x, positions=None, qkv: bool = True, ssm: bool = True):
        """x (b, t, d_model) -> (q, k, v, ssm_inputs): q, k, v as ``qkv`` gives them
        (None when qkv is False) and the tuple ``ssm_inputs`` gives (None when ssm is
        False or use_ssm is False).

        On CUDA the projections run as one matmul over their concatenated weights
        (``fused_linear``: one launch, not seven narrow ones); the parameters stay the
        separate modules (names, shapes, checkpoints and LoRA targets unchanged), and a
        module that is not a plain nn.Linear (a PEFT wrapper, a hook) runs on its own.
        """
        names = (_QKV if qkv else ()) + (_SSM if ssm and self.use_ssm else ())
        out = dict(zip(names, fused_linear(x, [getattr(self, n) for n in names])))
        q = k = v = ssm_out = None
        if qkv:
            d = self.head_dim
            q, k, v = (rearrange(out[n], "b t (h d) -> b t h d", d=d) for n in _QKV)
            q, k = rope(q, self.rope_base, positions), rope(k, self.rope_base, positions)
        if ssm and self.use_ssm:
            h = self.n_heads
            C = rearrange(out["W_C"], "b t (h n) -> b t h n", h=h)
            B = rearrange(out["W_B"], "b t (h n) -> b t h n", h=h)
            log_alpha = -F.softplus(out["alpha_proj"].to(state_dtype(x.dtype)))
            theta = rearrange(out["theta_proj"], "b t (h m) -> b t h m", h=h)
            ssm_out = (C, B, log_alpha, theta)
        return q, k, v, ssm_out

    def ssm_inputs(self, x):
        """The SSM branch: x (b, t, d_model) -> C, B (b, t, h, n), log_alpha (b, t, h)
        float32 (float64 for float64 x), theta (b, t, h, n/2)."""
        return self.projections(x, qkv=False)[3]

    def qkv(self, x, positions=None):
        """Projections with RoPE on q and k: q (b, t, h, d), k and v (b, t, hk, d);
        positions (t,) or (b, t) defaults to 0..t-1."""
        return self.projections(x, positions, ssm=False)[:3]

    def forward(self, x, cache: LayerCache | None = None, cu_seqlens=None, cp_group=None, cp_layout="zigzag",
                attention_mask=None, check_inputs: bool = True):
        """x (b, t, d_model) -> (b, t, d_model).

        cache: a LayerCache to decode with (x holds the next tokens; the cache grows).
        cu_seqlens: int32 (n_seqs + 1,) for packed sequences in batch 1 (training); with
            cp_group, of the whole sequence.
        cp_group: a torch.distributed process group for context parallelism: x is this
            rank's shard (b, t / W, d_model) of the sequence, as
            ``sisa.distributed.shard_sequence(..., layout=cp_layout)`` cuts it, and the
            result is this rank's shard of the layer's output on the whole sequence.
        attention_mask: optional (b, t) bool, False at pad tokens (any pattern; left
            padding is what ``generate`` makes). The rule (``_forward_padded``): every
            real token's output equals that of its row with the pads deleted; a pad's
            output row is 0. With a cache that holds pads, a call without a mask
            counts every new token as real.
        check_inputs: False skips the host sync that checks cu_seqlens' values (the
            model checks them once for all its layers).
        """
        self._check_x(x)
        if cache is not None and not isinstance(cache, LayerCache):
            raise TypeError(f"cache must be a LayerCache or None, got {type(cache).__name__}")
        if cache is not None and cu_seqlens is not None:
            raise ValueError("cache and cu_seqlens cannot be combined")
        if cache is not None and cache.batch not in (None, x.shape[0]):
            raise ValueError(f"cache holds {cache.batch} rows but x has batch {x.shape[0]}; decode the batch the "
                             "cache was filled with (LayerCache.select_batch keeps some rows) or start a new cache")
        if attention_mask is not None or (cache is not None and cache.has_pads):
            if cu_seqlens is not None or cp_group is not None:
                raise ValueError("attention_mask cannot be combined with cu_seqlens or cp_group")
            if attention_mask is None:
                attention_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            if (not isinstance(attention_mask, torch.Tensor) or attention_mask.dtype != torch.bool
                    or tuple(attention_mask.shape) != tuple(x.shape[:2])):
                raise ValueError(f"attention_mask must be a bool tensor of shape (b, t) = {tuple(x.shape[:2])}, "
                                 f"got {getattr(attention_mask, 'dtype', type(attention_mask).__name__)} "
                                 f"{tuple(getattr(attention_mask, 'shape', ()))}")
            return self._forward_padded(x, attention_mask, cache)
        if cp_group is not None:
            if cache is not None:
                raise ValueError("cache and cp_group cannot be combined (decoding is not sharded)")
            return self._forward_context_parallel(x, cu_seqlens, cp_group, cp_layout)
        t = x.shape[1]
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, t, x.shape[0], values=check_inputs, device=x.device)
            pos = packed_positions(cu_seqlens, t)
        else:
            start = cache.length if cache is not None else 0
            pos = torch.arange(start, start + t, device=x.device)
        q, k, v, ssm = self.projections(x, pos)
        if not self.use_ssm:
            o = self._forward_plain(q, k, v, cache, cu_seqlens)
        elif cache is None:
            o = sisa_attention(q, k, v, *ssm, self.lam(), backend=self.backend,
                               cu_seqlens=cu_seqlens, check_inputs=False)
        else:
            o = self._forward_cached(q, k, v, ssm, cache)
        return self.W_O(rearrange(o, "b t h d -> b t (h d)"))

    def _forward_context_parallel(self, x, cu_seqlens, group, layout):
        """This rank's shard through sisa.distributed (the baseline, use_ssm=False, runs
        the same exact path with a zero SSM term)."""
        from .distributed import context_parallel_attention, shard_positions, world_size
        t = x.shape[1] * world_size(group)
        pos = shard_positions(t, group, layout, device=x.device)
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, t, x.shape[0], device=x.device)
            pos = packed_positions(cu_seqlens, t)[pos]
        q, k, v, ssm = self.projections(x, pos)
        if self.use_ssm:
            C, B, log_alpha, theta = ssm
            lam = self.lam()
        else:
            b, tl, h = q.shape[:3]
            C = B = q.new_zeros(b, tl, h, 2)
            log_alpha, theta, lam = q.new_zeros(b, tl, h), q.new_zeros(b, tl, h, 1), q.new_ones(h)
        o = context_parallel_attention(q, k, v, C, B, log_alpha, theta, lam, group=group, layout=layout,
                                       backend=self.backend, cu_seqlens=cu_seqlens, check_inputs=False)
        return self.W_O(rearrange(o, "b t h d -> b t (h d)"))

    def _check_x(self, x):
        """x: a floating (b, t, d_model) tensor in the weights' dtype (any dtype under autocast)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (b, t, d_model), got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor (b, t, d_model), got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (b, t, d_model) = (b, t, {self.d_model}), got {tuple(x.shape)}")
        w = self.W_Q.weight.dtype
        dev = x.device.type
        if x.dtype != w and not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):
            raise TypeError(f"x has dtype {x.dtype} but the layer's weights are {w}; "
                            f"cast x (x.to({w})) or the layer (layer.to({x.dtype}))")

    def _forward_cached(self, q, k, v, ssm, cache):
        C, B, log_alpha, theta = ssm
        C_rot, B_rot, g, cache.state = ssm_importance_scan(C, B, log_alpha, theta, initial_state=cache.state,
                                                           check_inputs=False)
        prefill = cache.length == 0
        past = cache.append(k=k, v=v, B_rot=B_rot, g=g, theta=theta)
        if prefill:  # the prompt: the ordinary fast path
            return attention_from_scan(q, k, v, C_rot, B_rot, g, self.lam(), backend=self.backend)
        return cached_attention(q, past["k"], past["v"], C_rot, past["B_rot"], past["g"], self.lam(), cache=cache)

    def _forward_plain(self, q, k, v, cache, cu_seqlens):
        rep = self.n_heads // self.n_kv_heads
        if cache is not None:
            past = cache.append(k=k, v=v)
            k, v = past["k"], past["v"]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        if cu_seqlens is None:
            return _plain_attention(q, k, v)
        segments = check_cu_seqlens(cu_seqlens, q.shape[1], q.shape[0], device=q.device)
        if segments is None:                       # the meta device: no values, one sequence's shapes
            segments = [(0, q.shape[1])]
        return torch.cat([_plain_attention(q[:, a:b], k[:, a:b], v[:, a:b]) for a, b in segments], dim=1)

    def _forward_padded(self, x, mask, cache):
        """Batches with pads. mask (b, t) bool, True at real tokens.

        The rule: a pad has no effect on any real token. In terms of the maths, a pad
        position gets log_alpha = 0 and theta = 0 (no decay, no rotation: g and Phi
        carry across it unchanged), it is never a key (its score is -inf for every
        other query), and it does not advance positions (a real token's RoPE position
        is the number of real tokens before it in its row, so the first real token is
        at 0). So each real token's output equals that of its row with the pads
        deleted, whatever the pattern (left, right or inner pads). A pad's own output
        row is 0 (before W_O), so a fully padded row stays finite and no NaN reaches
        real rows, in the forward or the backward.

        Without a cache, or for a cache's first call, the real tokens are packed into
        one sequence per row (``cu_seqlens``, batch 1), so every backend computes them
        exactly as it computes packed sequences, and scattered back. A later cached
        step over a cache that holds pads attends with a key mask: the Triton decode
        kernel on CUDA (``cached_attention(key_mask=...)``), elsewhere the explicit
        score (``naive_attention(key_mask=...)``, exact, O(s T) per step, not the
        widened-SDPA path); SDPA with a boolean mask when use_ssm is False.
        """
        b, t = mask.shape
        before = (cache.real_lengths(b, x.device) if cache is not None
                  else torch.zeros(b, dtype=torch.long, device=x.device))
        pos = (before[:, None] + mask.long().cumsum(1) - 1).clamp(min=0)         # pads: any valid position
        q, k, v, ssm = self.projections(x, pos)
        prefill = cache is None or cache.length == 0
        if cache is not None:
            if self.use_ssm:
                C, B, log_alpha, theta = ssm
                pad = ~mask
                theta = theta.masked_fill(pad[..., None, None], 0.0)
                C_rot, B_rot, g, cache.state = ssm_importance_scan(
                    C, B, log_alpha.masked_fill(pad[..., None], 0.0), theta, initial_state=cache.state,
                    check_inputs=False)
                past = cache.append(k=k, v=v, B_rot=B_rot, g=g, theta=theta)
            else:
                past = cache.append(k=k, v=v)
            cache.record_mask(mask)
        if prefill:
            return self.W_O(rearrange(self._packed_attention(q, k, v, ssm, mask), "b t h d -> b t (h d)"))
        keys = cache.key_mask()
        if self.use_ssm:
            o = cached_attention(q, past["k"], past["v"], C_rot, past["B_rot"], past["g"], self.lam(),
                                 key_mask=keys)
        else:
            o = self._masked_plain(q, past["k"], past["v"], keys)
        o = o.masked_fill(~mask[..., None, None], 0.0)
        return self.W_O(rearrange(o, "b t h d -> b t (h d)"))

    def _packed_attention(self, q, k, v, ssm, mask):
        """Attention of each row's real tokens among themselves, through the packed
        (cu_seqlens) path: q (b, t, h, d), k, v (b, t, hk, d), ssm the (C, B,
        log_alpha, theta) of ssm_inputs or None, mask (b, t) -> (b, t, h, d), 0 at pads."""
        b, t, h, d = q.shape
        idx = mask.reshape(-1).nonzero().squeeze(1)                   # one host sync
        out = q.new_zeros(b * t, h, d)
        if idx.numel() == 0:
            return out.view(b, t, h, d)
        lengths = mask.sum(1)
        cu = torch.unique_consecutive(F.pad(lengths.cumsum(0), (1, 0))).to(torch.int32)   # drops empty rows

        def packed(z):
            return z.reshape(b * t, *z.shape[2:]).index_select(0, idx)[None]
        if ssm is None:
            o = self._forward_plain(packed(q), packed(k), packed(v), None, cu)
        else:
            o = sisa_attention(*(packed(z) for z in (q, k, v, *ssm)), self.lam(), backend=self.backend,
                               cu_seqlens=cu, check_inputs=False)
        return out.index_copy(0, idx, o[0]).view(b, t, h, d)

    def _masked_plain(self, q, k, v, keys):
        """Causal attention of the last s of T positions with pad keys excluded (a pad
        query sees only itself): q (b, s, h, d); k, v (b, T, hk, d); keys (b, T) bool."""
        s, T = q.shape[1], k.shape[1]
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        j = torch.arange(T, device=q.device)
        i = torch.arange(T - s, T, device=q.device)[:, None]
        allowed = (j <= i) & (keys[:, None, None, :] | (j == i))                 # (b, 1, s, T)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=allowed)
        return o.transpose(1, 2)
