"""The paper's causal LM: pre-norm SISA blocks with SwiGLU FFNs and a tied head.

With ``use_ssm=False`` the same code is the Transformer baseline.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import LayerCache
from .layer import SISAAttention, check_attention_config, check_int, check_real
from .varlen import check_cu_seqlens

# name: (d_model, n_heads, n_layers, Transformer d_ff), docs/design.md section 2.
PRESETS = {"50M": (512, 8, 6, 2048), "152M": (768, 12, 12, 3072), "369M": (1024, 16, 24, 2944)}


def ssm_params_per_layer(d_model: int, n_heads: int, d_state: int) -> int:
    """Parameters SISA adds to a layer: W_B, W_C, theta_proj, alpha_proj (+bias), lambda_raw."""
    return d_model * n_heads * (2 * d_state + d_state // 2 + 1) + 2 * n_heads


def matched_d_ff(d_model: int, n_heads: int, d_state: int, transformer_d_ff: int, multiple_of: int = 8) -> int:
    """SISA's FFN width that matches a Transformer's parameter count: the paper's rule
    (the SwiGLU FFN's 3 * d_model * d_ff shrinks by what the SSM branch adds, rounded),
    then rounded down to a multiple of ``multiple_of``, so SISA never has more
    parameters than the paper's width gives and its FFN matmuls keep an aligned width
    (1939 ran at ~80% of 1936's throughput, one CPU thread; docs/design.md section 2).
    multiple_of=1 gives the paper's own widths (1939 at 50M, 2908 at 152M); a width
    below multiple_of is left as it is."""
    check_int("multiple_of", multiple_of, 1)
    d_ff = transformer_d_ff - round(ssm_params_per_layer(d_model, n_heads, d_state) / (3 * d_model))
    return d_ff - d_ff % multiple_of if d_ff >= multiple_of else d_ff


@dataclasses.dataclass
class SISAConfig:
    """The model's shape. Validated when built (and again by SISAModel): a bad field
    raises a ValueError or TypeError naming it. n_kv_heads None means n_heads."""

    vocab_size: int = 50277
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_state: int = 16
    d_ff: int = 2908            # the paper's 152M width; kept: a saved HF config omits defaults
    n_kv_heads: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    use_ssm: bool = True
    backend: str = "auto"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError or TypeError naming the first bad field."""
        check_int("vocab_size", self.vocab_size, 1)
        check_int("n_layers", self.n_layers, 1)
        check_int("d_ff", self.d_ff, 1)
        check_real("norm_eps", self.norm_eps)
        check_attention_config(self.d_model, self.n_heads, self.d_state, self.n_kv_heads, self.rope_base,
                               self.backend, self.use_ssm)

    @classmethod
    def preset(cls, name: str, d_state: int = 16, use_ssm: bool = True, **overrides) -> "SISAConfig":
        """The paper's 50M / 152M / 369M shapes; SISA's d_ff shrunk to match the Transformer
        (``matched_d_ff``: a multiple of 8, a few below the paper's own 1939 / 2908)."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        d_model, heads, layers, t_ff = PRESETS[name]
        d_ff = matched_d_ff(d_model, heads, d_state, t_ff) if use_ssm else t_ff
        return cls(d_model=d_model, n_heads=heads, n_layers=layers, d_state=d_state, d_ff=d_ff,
                   use_ssm=use_ssm, **overrides)

    def replace(self, **changes) -> "SISAConfig":
        return dataclasses.replace(self, **changes)


class SwiGLU(nn.Module):
    def __init__(self, d_model, d_ff):
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=False)
        self.w_up = nn.Linear(d_model, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, cfg: SISAConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = SISAAttention(cfg.d_model, cfg.n_heads, cfg.d_state, cfg.n_kv_heads,
                                  cfg.rope_base, cfg.backend, cfg.use_ssm)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn = SwiGLU(cfg.d_model, cfg.d_ff)

    def forward(self, x, cache=None, cu_seqlens=None, cp_group=None, cp_layout="zigzag", attention_mask=None,
                check_inputs=True):
        x = x + self.attn(self.attn_norm(x), cache=cache, cu_seqlens=cu_seqlens, cp_group=cp_group,
                          cp_layout=cp_layout, attention_mask=attention_mask, check_inputs=check_inputs)
        return x + self.ffn(self.ffn_norm(x))


class SISAModel(nn.Module):
    """Causal LM. forward(ids (b, t) long) -> logits (b, t, vocab_size).

    ``gradient_checkpointing = True`` recomputes each block's activations in the
    backward instead of keeping them (``torch.utils.checkpoint``, non-reentrant, one
    checkpoint per block) whenever autograd records a forward without caches.
    """

    def __init__(self, config: SISAConfig):
        super().__init__()
        if not isinstance(config, SISAConfig):
            raise TypeError(f"config must be a SISAConfig, got {type(config).__name__}")
        config.validate()   # a dataclass's fields can change after it is built
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.gradient_checkpointing = False
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.layers:
            for lin in (block.ffn.w_gate, block.ffn.w_up, block.ffn.w_down):
                nn.init.normal_(lin.weight, std=0.02)

    def forward(self, ids=None, caches=None, cu_seqlens=None, *, attention_mask=None, check_inputs: bool = True,
                cp_group=None, cp_layout: str = "zigzag", inputs_embeds=None, output_hidden_states: bool = False):
        """ids (b, t) int64 or int32 -> logits (b, t, vocab_size).

        inputs_embeds: instead of ids, (b, t, d_model) vectors in the place of the
        embedding's rows (prompt tuning, multimodal prefixes); the head stays the
        embedding's weight.
        output_hidden_states: return (logits, hidden_states), hidden_states a tuple of
        n_layers + 1 (b, t, d_model) tensors as transformers' models give them: the
        embeddings, each block's output, the last one after the final norm.

        caches: a list of one LayerCache per layer (see ``new_caches``) for cached decoding.
        cu_seqlens: int32 (n_seqs + 1,) for packed sequences in batch 1 (with cp_group:
        of the whole sequence).
        check_inputs: also check that every id is in [0, vocab_size) and cu_seqlens' values
        (once for all layers; a host sync each, skipped under torch.compile and on the meta
        device). With False and cu_seqlens, the SISA layers make no host sync on the
        triton backend (the use_ssm=False baseline loops over the sequences).
        cp_group: context parallelism over this torch.distributed group: ids is this
        rank's shard (b, t / W) as ``sisa.distributed.shard_sequence(ids, layout=cp_layout)``
        cuts it, and the logits are this rank's shard of the whole sequence's logits
        (shard the labels the same way; the per-rank losses sum to the whole loss).
        attention_mask: optional (b, t), or (b, T + t) with caches holding T tokens (the
        whole sequence so far, as ``transformers`` passes it), of 0/1 (bool or integer):
        0 marks a pad. Each real token's logits equal those of its row with the pads
        deleted (pads add no decay, no rotation, are never keys and do not advance
        positions; see SISAAttention._forward_padded); a pad's logits are finite and
        meaningless. An all-ones mask is the same as none. One host sync checks it. Only
        the last t columns are read: the caches remember which cached tokens were pads.
        """
        tokens = self._check_tokens(ids, inputs_embeds)   # (b, t): ids, or a view standing in for them
        self._check_caches(caches, cu_seqlens, tokens.shape[0])
        if check_inputs and ids is not None:
            self._check_id_range("ids", ids)
        if cu_seqlens is not None and cp_group is None:
            check_cu_seqlens(cu_seqlens, tokens.shape[1], tokens.shape[0], values=check_inputs, device=tokens.device)
        mask = self._new_token_mask(attention_mask, tokens, caches, cu_seqlens, cp_group)
        x = self.embed(ids) if inputs_embeds is None else inputs_embeds
        hidden = [x]
        checkpoint = self._block_checkpoint(caches)
        for i, block in enumerate(self.layers):
            args = (x, None if caches is None else caches[i], cu_seqlens, cp_group, cp_layout, mask, False)
            x = block(*args) if checkpoint is None else checkpoint(block, *args)
            hidden.append(x)
        x = self.final_norm(x)
        logits = F.linear(x, self.embed.weight)   # tied head
        return (logits, (*hidden[:-1], x)) if output_hidden_states else logits

    def _check_tokens(self, ids, inputs_embeds):
        """Exactly one of ids (b, t) and inputs_embeds (b, t, d_model); returns a (b, t)
        tensor on their device (ids, or a view of inputs_embeds)."""
        if (ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of ids (token ids) and inputs_embeds")
        if ids is not None:
            _check_ids("ids", ids)
            return ids
        if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
            raise TypeError(f"inputs_embeds must be a floating-point torch.Tensor (b, t, d_model), got "
                            f"{getattr(inputs_embeds, 'dtype', type(inputs_embeds).__name__)}")
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
            raise ValueError(f"inputs_embeds must have shape (b, t, d_model) = (b, t, {self.config.d_model}), "
                             f"got {tuple(inputs_embeds.shape)}")
        return inputs_embeds[..., 0]

    def _block_checkpoint(self, caches):
        """The checkpoint function to run each block through, or None (no checkpointing:
        switched off, a cached step, or autograd not recording). transformers'
        gradient_checkpointing_enable sets ``_gradient_checkpointing_func``."""
        if not self.gradient_checkpointing or caches is not None or not torch.is_grad_enabled():
            return None
        return getattr(self, "_gradient_checkpointing_func", None) or functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False)

    def _new_token_mask(self, attention_mask, ids, caches, cu_seqlens, cp_group):
        """The validated mask of the new tokens (b, t) bool, or None when nothing is padded."""
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor (b, t) of 0/1, got {type(attention_mask).__name__}")
        if attention_mask.is_floating_point() or attention_mask.is_complex():
            raise TypeError(f"attention_mask must be bool or integer 0/1, got dtype {attention_mask.dtype}")
        b, t = ids.shape
        past = 0 if caches is None else caches[0].length
        lengths = sorted({t, past + t})
        if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] not in lengths:
            raise ValueError(f"attention_mask must have shape (b, t) or, with caches, (b, cached + t): "
                             f"{' or '.join(str((b, n)) for n in lengths)}, got {tuple(attention_mask.shape)}")
        if attention_mask.device != ids.device:
            raise ValueError(f"attention_mask is on {attention_mask.device} but ids on {ids.device}")
        mask = attention_mask[:, attention_mask.shape[1] - t:]
        if mask.numel() == 0:
            return None
        if mask.device.type == "meta":        # no values, shapes only: they do not depend on where pads are
            return None
        if torch.compiler.is_compiling():     # values unknown: take the padded path
            return mask.bool()
        lo, hi = torch.stack(torch.aminmax(mask.to(torch.int64))).tolist()
        if lo < 0 or hi > 1:
            raise ValueError(f"attention_mask must hold only 0 (pad) and 1 (token), got values in [{lo}, {hi}]")
        if lo == 1 and not (caches is not None and caches[0].has_pads):
            return None                                   # nothing padded: the ordinary path
        if cu_seqlens is not None or cp_group is not None:
            raise ValueError("an attention_mask with pads cannot be combined with cu_seqlens or cp_group")
        return mask.bool()

    def _check_caches(self, caches, cu_seqlens, batch):
        if caches is None:
            return
        if cu_seqlens is not None:
            raise ValueError("caches and cu_seqlens cannot be combined")
        if not isinstance(caches, (list, tuple)):
            raise TypeError(f"caches must be a list of LayerCache (one per layer, see new_caches), "
                            f"got {type(caches).__name__}")
        if len(caches) != len(self.layers):
            raise ValueError(f"caches must hold one LayerCache per layer: expected {len(self.layers)}, "
                             f"got {len(caches)}")
        for i, cache in enumerate(caches):
            if not isinstance(cache, LayerCache):
                raise TypeError(f"caches[{i}] must be a LayerCache, got {type(cache).__name__}")
        lengths = {cache.length for cache in caches}
        if len(lengths) > 1:
            raise ValueError(f"caches hold different numbers of tokens ({sorted(lengths)}); they must "
                             "advance together (start again from new_caches())")
        held = {cache.batch for cache in caches} - {None}
        if held and held != {batch}:
            raise ValueError(f"caches hold a batch of {sorted(held)} rows but ids has {batch}; feed the batch the "
                             "caches were filled with (select_batch on each keeps some rows) or start from new_caches()")

    def _check_id_range(self, name, ids):
        """Every id in [0, vocab_size): one host sync, skipped where values are unknown."""
        if not ids.numel() or ids.device.type == "meta" or torch.compiler.is_compiling():
            return
        lo, hi = torch.stack(torch.aminmax(ids)).tolist()
        vocab = self.config.vocab_size
        if lo < 0 or hi >= vocab:
            raise ValueError(f"{name} must be token ids in [0, vocab_size) = [0, {vocab}), "
                             f"got min {lo}, max {hi}")

    def new_caches(self, capacity: int = 0) -> list[LayerCache]:
        """Empty per-layer decoding caches, preallocated for ``capacity`` tokens."""
        return [LayerCache(capacity) for _ in self.layers]

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, attention_mask=None):
        """Extend ``input_ids`` (b, t) by ``max_new_tokens`` -> (b, t + new).

        Greedy by default (temperature 0); temperature > 0 samples (optionally from the
        top_k >= 1 logits). max_new_tokens >= 0 (0 returns the prompt). The prompt is
        processed once, then each step feeds one token through the caches.
        attention_mask: optional (b, t) 0/1 marking pads of the prompt (left padding
        for prompts of different lengths; right or inner pads work too: a row continues
        from its last real token); each row then decodes as it would alone. A row with
        no real token is a ValueError.
        """
        _check_ids("input_ids", input_ids)
        if input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (b, t) with t >= 1, got shape {tuple(input_ids.shape)}")
        check_int("max_new_tokens", max_new_tokens, 0)
        check_real("temperature", temperature, allow_zero=True)
        if top_k is not None:
            check_int("top_k", top_k, 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self._check_id_range("input_ids", input_ids)
        if input_ids.shape[0] == 0:                      # nothing to decode (and no row to index)
            return input_ids.new_empty(0, input_ids.shape[1] + max_new_tokens)
        caches = self.new_caches(input_ids.shape[1] + max_new_tokens)
        logits = self(input_ids, caches=caches, attention_mask=attention_mask, check_inputs=False)
        logits = logits[torch.arange(len(logits), device=logits.device), self._last_real(attention_mask, logits)]
        out = [input_ids]
        for step in range(max_new_tokens):
            nxt = _pick(logits.float(), temperature, top_k, generator)
            out.append(nxt)
            if step + 1 < max_new_tokens:   # nxt < vocab_size by construction: no sync to check it
                logits = self(nxt, caches=caches, check_inputs=False)[:, -1]
        return torch.cat(out, dim=1)

    @staticmethod
    def _last_real(attention_mask, logits):
        """(b,) index of each prompt row's last real token: t - 1 without a mask. After
        it come only pads, which change nothing, so the row's next token follows it
        (right padding decodes as the row alone would)."""
        b, t = logits.shape[:2]
        if attention_mask is None:
            return torch.full((b,), t - 1, device=logits.device)
        real = attention_mask[:, -t:].to(device=logits.device, dtype=torch.bool)
        if not bool(real.any(1).all()):
            raise ValueError(f"attention_mask has a row with no real token (all 0): row "
                             f"{(~real.any(1)).nonzero()[0].item()}; every prompt needs at least one")
        return t - 1 - real.flip(1).to(torch.int8).argmax(1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _check_ids(name, ids):
    """ids: a 2-D (batch, seqlen) int64 or int32 tensor (what nn.Embedding takes)."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids (b, t), got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64 (or int32) tensor of token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, seqlen), got shape {tuple(ids.shape)}")


def _pick(logits, temperature, top_k, generator):
    """logits (b, vocab) -> next ids (b, 1)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    # From the row maximum down, so that a tiny temperature sends the rest to -inf
    # rather than the maximum to inf (NaN probabilities).
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


PARAM_GROUP_STYLES = ("common", "paper")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.1, lam_lr_scale: float = 0.1,
                 style: str = "common"):
    """AdamW parameter groups; every trainable parameter appears exactly once.

    style="paper": exactly what the authors' train.py does: ``lambda_raw`` at
        ``lr * lam_lr_scale`` with no weight decay; everything else (matrices, the
        embedding, norm weights and ``alpha_proj.bias`` included) at ``lr`` with
        ``weight_decay``. Two groups: [rest, lambda_raw].
    style="common" (default): the usual no-decay rule on top: ``lambda_raw`` as above;
        parameters with fewer than 2 dims (norm weights, ``alpha_proj.bias``) at
        ``lr`` without decay; matrices and the embedding at ``lr`` with
        ``weight_decay``. Three groups: [decay, no_decay, lambda_raw].
    The lambda_raw group is left out when the model has none (use_ssm False).
    """
    if not isinstance(style, str) or style not in PARAM_GROUP_STYLES:
        raise ValueError(f"style must be one of {PARAM_GROUP_STYLES}, got {style!r}")
    check_real("lr", lr)
    check_real("weight_decay", weight_decay, allow_zero=True)
    check_real("lam_lr_scale", lam_lr_scale)
    lam, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("lambda_raw"):
            lam.append(p)
        elif style == "common" and p.dim() < 2:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay}]
    if style == "common":
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    if lam:
        groups.append({"params": lam, "lr": lr * lam_lr_scale, "weight_decay": 0.0})
    return groups
