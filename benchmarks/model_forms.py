"""The three models ``benchmarks.model`` compares, and the calls it times.

A *form* is a model plus how its attention runs:

    "transformer" the parameter-matched baseline (``use_ssm=False``) on the best stock
                  attention here: flash-attn's ``flash_attn_func`` when importable on
                  CUDA in 16 bits, else PyTorch SDPA (what ``sisa.layer`` calls);
    "sisa"        ``sisa.SISAModel`` on the package's default path (``backend="auto"``);
    "sisa-paper"  the same SISA weights with the paper's attention form swapped in:
                  ``sisa.paper_sdpa_attention`` (midpoint offset, clamp 11, v left
                  narrow), for the training step and the prefill.

A form's ``swap`` is entered around every call of that model only (so the float64
judge in ``benchmarks.model_gate`` always runs the package's own code). Adding a form:
add an entry to ``FORMS`` with its swap (a context manager factory taking the device).

Same weights: "sisa-paper" is a copy of "sisa". The Transformer has no SSM
projections and a wider FFN (its d_ff matches the parameter count, docs/design.md
section 2); it takes every tensor whose name and shape it shares with the SISA model
(embedding, norms, W_Q/W_K/W_V/W_O), and its FFN keeps its own N(0, 0.02) init.

Shapes: ids (b, t) int64; logits (b, t, vocab).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

import sisa
import sisa.layer

from .providers import _flash_attn_func


def _paper_attention(q, k, v, C, B, log_alpha, theta, lam, *, softmax_scale=None, backend=None,
                     cu_seqlens=None, check_inputs=True):
    """``sisa.sisa_attention``'s signature over the paper's form (clamp and all)."""
    if cu_seqlens is not None:
        raise ValueError("the paper's form has no packed (cu_seqlens) path")
    return sisa.paper_sdpa_attention(q, k, v, C, B, log_alpha, theta, lam, softmax_scale=softmax_scale)


def _flash_plain(q, k, v):
    """sisa.layer._plain_attention's contract through flash-attn: the s queries are the
    last s of the t keys (flash-attn >= 2.1 aligns its causal mask bottom-right)."""
    return _flash_attn_func()(q, k, v, causal=True)


@contextlib.contextmanager
def _patched(module, name, value):
    old = getattr(module, name)          # AttributeError when the package moved the function
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _uses_flash(device, dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash_attn_func() is not None


def _transformer_swap(device, dtype):
    if _uses_flash(device, dtype):
        return _patched(sisa.layer, "_plain_attention", _flash_plain)
    return contextlib.nullcontext()


def _transformer_impl(device, dtype):
    if _uses_flash(device, dtype):
        import flash_attn
        return f"flash_attn {flash_attn.__version__} (flash_attn_func)"
    return "PyTorch SDPA (sisa.layer's baseline path)" + (" on CPU" if device.type == "cpu" else "")


def _sisa_impl(device, dtype):
    attention = sisa.backends.resolve("auto", torch.device(device), "attention", dtype)
    return f"sisa default path (backend='auto' -> {attention})"


@dataclasses.dataclass(frozen=True)
class Form:
    name: str
    use_ssm: bool
    swap: Callable                                   # (device, compute dtype) -> context manager
    impl: Callable                                   # (device, compute dtype) -> str
    decode_unsupported: str | None = None            # why cached decoding is not measured


FORMS = {f.name: f for f in (
    Form("transformer", False, _transformer_swap, _transformer_impl),
    Form("sisa", True, lambda device, dtype: contextlib.nullcontext(), _sisa_impl),
    Form("sisa-paper", True, lambda device, dtype: _patched(sisa.layer, "sisa_attention", _paper_attention),
         lambda device, dtype: "sisa.paper_sdpa_attention (midpoint offset, clamp 11)",
         decode_unsupported="the paper's form has no cached step: its offset c is the midpoint of the "
                            "whole sequence's g, which every new token moves"),
)}


def build_models(config: sisa.SISAConfig, transformer_d_ff: int, forms, device, seed: int = 0) -> dict:
    """{form name: SISAModel} with shared weights (see the module docstring), float32 on device."""
    torch.manual_seed(seed)
    base = sisa.SISAModel(config.replace(use_ssm=True))
    torch.manual_seed(seed + 1)
    baseline = sisa.SISAModel(config.replace(use_ssm=False, d_ff=transformer_d_ff))
    own = baseline.state_dict()
    shared = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    baseline.load_state_dict(shared, strict=False)
    models = {}
    for name in forms:
        models[name] = baseline if name == "transformer" else copy.deepcopy(base)
    return {name: m.to(device) for name, m in models.items()}


def checkpointing_unsupported(model) -> str | None:
    """None when ``model`` has a ``gradient_checkpointing`` switch, else why not."""
    if isinstance(getattr(model, "gradient_checkpointing", None), bool):
        return None
    if callable(getattr(model, "gradient_checkpointing_enable", None)):
        return None
    return f"sisa.SISAModel {sisa.__version__} has no gradient_checkpointing switch"


def set_checkpointing(model, on: bool) -> None:
    if isinstance(getattr(model, "gradient_checkpointing", None), bool):
        model.gradient_checkpointing = on
    elif on:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()


def lm_loss(model, ids, autocast):
    """(next-token cross-entropy in float32, logits (b, t, vocab)) of ids (b, t), under
    the autocast context manager given. Callers enter the form's swap around this and
    the backward (gradient checkpointing recomputes the forward inside the backward)."""
    with autocast:
        logits = model(ids, check_inputs=False)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()), logits


def autocast_for(device, amp: str | None):
    """A context-manager factory: torch.autocast for amp "bf16"/"fp16", else nothing."""
    if amp is None:
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return lambda: torch.autocast(torch.device(device).type, dtype=dtype)


def train_step(model, form, ids, device, amp, lr=1e-5, checkpointing=False):
    """One AdamW step's callable: zero grads, forward, loss, backward, step. The lr is
    small so that the weights (and the decays, which set the sdpa path's chunking)
    stay near their initialisation over the run. AdamW's state is created here (one
    step on zero gradients: weight decay moves the weights by lr * 0.1 relative)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    for p in model.parameters():      # create AdamW's state now, so the first timed step is a steady one
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    compute = _compute_dtype(amp)
    autocast = autocast_for(device, amp)

    def step():
        if checkpointing:
            set_checkpointing(model, True)
        try:
            opt.zero_grad(set_to_none=True)
            with form.swap(device, compute):
                loss = lm_loss(model, ids, autocast())[0]
                loss.backward()
            opt.step()
        finally:
            if checkpointing:
                set_checkpointing(model, False)
        return loss
    return step


def _compute_dtype(amp):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, torch.float32)


def prefill_step(model, form, ids, device, amp):
    """The prompt's forward under no_grad -> last logits (b, vocab): into fresh caches
    (what ``generate`` does) for the forms that decode, a plain forward for the paper's."""
    compute, autocast = _compute_dtype(amp), autocast_for(device, amp)

    @torch.no_grad()
    def step():
        caches = None if form.decode_unsupported else model.new_caches(ids.shape[1])
        with form.swap(device, compute), autocast():
            return model(ids, caches=caches, check_inputs=False)[:, -1]
    return step


def decode_step(model, form, prompt, token, device, amp):
    """One cached step at a fixed cache length: caches hold the prompt (b, T) (filled
    once, untimed); each call rewinds them to T tokens, feeds token (b, 1) and returns
    its logits (b, vocab). So every call does the same work at cache length T + 1."""
    compute, autocast = _compute_dtype(amp), autocast_for(device, amp)
    caches = model.new_caches(prompt.shape[1] + 1)
    with torch.no_grad(), form.swap(device, compute), autocast():
        model(prompt, caches=caches, check_inputs=False)
    snapshot = [(c.length, c.state) for c in caches]

    @torch.no_grad()
    def step():
        rewind(caches, snapshot)
        with form.swap(device, compute), autocast():
            return model(token, caches=caches, check_inputs=False)[:, -1]
    return step


def rewind(caches, snapshot) -> None:
    """Return each LayerCache to the (length, scan state) of ``snapshot``. The buffers
    past ``length`` are overwritten by the next append; the CPU path's widened keys
    (``cache.wide``) keep only the rows below it (as benchmarks.decode does)."""
    for cache, (length, state) in zip(caches, snapshot):
        cache.length, cache.state = length, state
        if cache.wide is not None:
            cache.wide["rows"] = min(cache.wide["rows"], length)
