"""``SISAForCausalLM``: ``sisa.SISAModel`` as a ``transformers`` causal LM.

The module holds a ``SISAModel`` under ``self.model`` (parameter names
``model.embed.weight``, ``model.layers.{i}.attn.W_Q.weight``, ...) and calls its
forward; nothing of the model is reimplemented here. The head is the embedding
(``SISAModel`` applies ``embed.weight`` itself), so there is no ``lm_head``
tensor and ``save_pretrained`` writes the embedding once.
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..layer import SISAAttention
from ..model import SISAModel, SwiGLU
from .cache import SISACache
from .config import SISAHFConfig

try:                                   # transformers >= 5: init functions that skip loaded weights
    from transformers import initialization as _init
except ImportError:                    # pragma: no cover - older transformers
    _init = nn.init

# The cache's field in CausalLMOutputWithPast: "cache" in transformers 5.2x, "past_key_values" before.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

# Beside the weights, for lm-eval's / transformers' trust_remote_code path (no network needed):
# the files only import the installed package.
_REMOTE_CODE = {
    "configuration_sisa.py": "from sisa.hf.config import SISAHFConfig  # noqa: F401\n",
    "modeling_sisa.py": "from sisa.hf.modeling import SISAForCausalLM  # noqa: F401\n",
}
_AUTO_MAP = {"AutoConfig": "configuration_sisa.SISAHFConfig",
             "AutoModelForCausalLM": "modeling_sisa.SISAForCausalLM"}

# attn_implementation names that mean one of the package's attention paths (SISAConfig.backend).
# flash_attention_* and flex_attention name kernels that compute softmax(q.k) alone; SISA's score
# adds an SSM term they cannot take, so they are refused with a pointer to backend="triton".
ATTN_IMPLEMENTATION_BACKENDS = {"eager": "naive", "sdpa": "sdpa"}
_REPORTED_ATTN = {"naive": "eager", "sdpa": "sdpa", "auto": "sisa_auto", "triton": "sisa_triton"}
_FORWARD_ARGS = ("input_ids", "attention_mask", "labels", "cache", "past_key_values", "use_cache", "position_ids",
                 "inputs_embeds", "return_dict", "logits_to_keep", "output_hidden_states", "output_attentions",
                 "num_items_in_batch")


class SISAPreTrainedModel(PreTrainedModel):
    config_class = SISAHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # lambda_raw stays float32 in a 16-bit model (the paper keeps it so; SISAAttention does on .to()).
    _keep_in_fp32_modules_strict = ["lambda_raw"]
    # gradient_checkpointing_enable() sets SISAModel.gradient_checkpointing: one checkpoint per block.
    supports_gradient_checkpointing = True
    # attn_implementation="sdpa" runs backend "sdpa" (stock SDPA over widened keys); no flash-attn or
    # flex_attention path exists (see ATTN_IMPLEMENTATION_BACKENDS).
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False,
                                              allow_all_kernels=False) -> str:
        """transformers' hook for ``attn_implementation``: "eager" selects backend "naive"
        (the explicit score matrix), "sdpa" backend "sdpa"; None (nothing requested)
        keeps ``config.backend``. Anything else raises a ValueError naming ``backend=``.
        Returns the name ``config._attn_implementation`` reports (``sisa_auto`` /
        ``sisa_triton`` for the backends no transformers name describes)."""
        if attn_implementation is None:
            return _REPORTED_ATTN[self.config.backend]
        if not isinstance(attn_implementation, str):
            raise TypeError(f"attn_implementation must be a str ({sorted(ATTN_IMPLEMENTATION_BACKENDS)}), got "
                            f"{type(attn_implementation).__name__}; SISA has no sub-models to give names to")
        if attn_implementation in _REPORTED_ATTN.values():
            backend = next(b for b, name in _REPORTED_ATTN.items() if name == attn_implementation)
        elif attn_implementation in ATTN_IMPLEMENTATION_BACKENDS:
            backend = ATTN_IMPLEMENTATION_BACKENDS[attn_implementation]
        else:
            fused = "flash" in attn_implementation or "flex" in attn_implementation
            raise ValueError(
                f"attn_implementation={attn_implementation!r} is not available for SISA: "
                + ("that kernel computes plain softmax attention and cannot add SISA's SSM score term; "
                   "SISA's own fused kernels are backend='triton' " if fused else "")
                + "(choose the attention path with backend=: from_pretrained(path, backend='triton' | 'sdpa' | "
                  "'naive' | 'auto') or SISAHFConfig(backend=...)); attn_implementation='sdpa' and 'eager' "
                  "select backend='sdpa' and 'naive'")
        self.config.backend = backend
        if isinstance(getattr(self, "model", None), SISAModel):             # after __init__: the built model too
            self.model.config.backend = backend
            for module in self.model.modules():
                if isinstance(module, SISAAttention):
                    module.backend = backend
        return attn_implementation

    def set_attn_implementation(self, attn_implementation, allow_all_kernels: bool = False):
        """Switch the attention path of a built model (see _check_and_adjust_attn_implementation)."""
        self.config._attn_implementation_internal = self._check_and_adjust_attn_implementation(attn_implementation)

    def _init_weights(self, module):
        """The paper's initialisation (docs/design.md section 2), for weights a
        checkpoint does not provide."""
        if isinstance(module, SISAAttention):
            for lin in (module.W_Q, module.W_K, module.W_V, module.W_O):
                _init.normal_(lin.weight, std=0.02)
            if module.use_ssm:
                for lin in (module.W_B, module.W_C, module.alpha_proj):
                    _init.normal_(lin.weight, std=0.02)
                _init.constant_(module.alpha_proj.bias, -5.0)
                _init.normal_(module.theta_proj.weight, std=0.01)
                _init.constant_(module.lambda_raw, -1.0)
        elif isinstance(module, SwiGLU):
            for lin in (module.w_gate, module.w_up, module.w_down):
                _init.normal_(lin.weight, std=0.02)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.RMSNorm):
            _init.ones_(module.weight)


class SISAForCausalLM(SISAPreTrainedModel, GenerationMixin):
    """forward(input_ids (b, t) or inputs_embeds (b, t, d_model), attention_mask (b, t) or
    (b, cached + t) of 0/1, labels (b, t), past_key_values / cache (SISACache), use_cache,
    output_hidden_states, num_items_in_batch) -> CausalLMOutputWithPast(loss, logits
    (b, t, vocab), cache, hidden_states).

    use_cache None means config.use_cache (True by default) outside training; with it
    a new SISACache is made when none is passed and returned in the output.

    Pads (attention_mask 0) follow ``SISAModel.forward``'s rule: each real token's
    logits equal those of its row with the pads deleted; pads add no decay, no
    rotation, are never keys and do not advance positions. ``position_ids`` is
    accepted because ``generate`` passes it, and ignored: positions are the count of
    real tokens before each token (what ``generate`` computes from the mask, too).
    Other keyword arguments raise a TypeError; output_attentions=True a ValueError (no
    attention weights exist: the kernels never form the score matrix).
    """

    # forward normalises the loss by num_items_in_batch when given (Trainer passes it under
    # gradient accumulation and DDP, and then does not divide the loss again).
    accepts_loss_kwargs = True

    def __init__(self, config: SISAHFConfig):
        super().__init__(config)
        self.model = SISAModel(config.to_sisa_config())
        self.post_init()

    @classmethod
    def from_sisa(cls, model: SISAModel, **config_kwargs) -> "SISAForCausalLM":
        """Wrap an existing SISAModel's weights (shared, not copied)."""
        if not isinstance(model, SISAModel):
            raise TypeError(f"model must be a sisa.SISAModel, got {type(model).__name__}")
        out = cls(SISAHFConfig.from_sisa_config(model.config, **config_kwargs))
        out.model = model
        return out

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False                    # generate must not make a DynamicCache: a SISACache instead

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length):
        """generate's hook: a SISACache preallocated for max_cache_length tokens unless
        the caller passed one (assisted decoding needs it before the first forward).
        A cache_implementation raises: SISA decodes only with its own cache."""
        if generation_config.cache_implementation is not None:
            raise ValueError(f"cache_implementation={generation_config.cache_implementation!r} is not supported: "
                             "SISA decodes with its own sisa.hf.SISACache; leave cache_implementation unset (or "
                             "pass past_key_values=SISACache(n_layers, capacity=...) to preallocate)")
        if model_kwargs.get("cache") is None and model_kwargs.get("past_key_values") is None \
                and generation_config.use_cache is not False:
            model_kwargs["cache"] = SISACache(len(self.model.layers), capacity=max_cache_length)

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return None                     # tied: SISAModel multiplies by embed.weight

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """transformers' resize, then the inner SISAConfig.vocab_size follows (ids are
        checked against it: after a shrink, ids past the new size raise a ValueError)."""
        embed = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.model.config.vocab_size = self.config.vocab_size = embed.num_embeddings
        return embed

    def forward(self, input_ids=None, attention_mask=None, labels=None, past_key_values=None, use_cache=None,
                position_ids=None, inputs_embeds=None, return_dict=None, logits_to_keep=0, cache=None,
                output_hidden_states=None, output_attentions=None, num_items_in_batch=None, **kwargs):
        """See the class docstring. labels: (b, t) token ids, -100 ignored; the loss is the
        cross-entropy of logits[:, :-1] against labels[:, 1:] (in float32): its mean over
        the labels that are not -100, or, with num_items_in_batch (what Trainer passes:
        the count over the whole accumulated, all-rank batch), the sum / num_items_in_batch."""
        if kwargs:
            raise TypeError(f"SISAForCausalLM.forward got unexpected keyword arguments {sorted(kwargs)}; it "
                            f"takes {', '.join(_FORWARD_ARGS)}")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_attentions:
            raise ValueError("output_attentions=True is not supported: SISA's kernels never form the attention "
                             "weights (the score matrix exists only tile by tile inside a fused kernel), so there "
                             "are none to return; output_hidden_states=True gives every layer's output")
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the cache as either cache or past_key_values, not both")
        cache = cache if cache is not None else past_key_values
        if use_cache is None:                  # as transformers' models: no cache while training
            use_cache = self.config.use_cache and not self.training
        if cache is None and use_cache:
            cache = SISACache(len(self.model.layers))
        if cache is not None and not isinstance(cache, SISACache):
            raise TypeError(f"past_key_values (cache) must be a sisa.hf.SISACache or None, got {type(cache).__name__}")
        if cache is not None and len(cache.layers) != len(self.model.layers):
            raise ValueError(f"past_key_values (cache) has {len(cache.layers)} layers, the model "
                             f"{len(self.model.layers)}")
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        logits = self.model(input_ids, caches=None if cache is None else cache.layer_caches,
                            attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            output_hidden_states=output_hidden_states)
        logits, hidden_states = logits if output_hidden_states else (logits, None)
        loss = None if labels is None else _shifted_loss(logits, labels, num_items_in_batch)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        out = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=hidden_states,
                                     **{_CACHE_FIELD: cache if use_cache else None})
        return_dict = getattr(self.config, "return_dict", True) if return_dict is None else return_dict
        return out if return_dict else out.to_tuple()

    def save_pretrained(self, save_directory, *args, remote_code: bool = True, **kwargs):
        """transformers' save_pretrained (safetensors), plus, with remote_code, two
        one-line files and an ``auto_map`` so that ``from_pretrained(dir,
        trust_remote_code=True)`` (as lm-eval's CLI does) loads it without ``import
        sisa.hf``. They import the installed ``sisa`` package; nothing is downloaded."""
        if remote_code:
            self.config.auto_map = dict(_AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if remote_code:
            for name, text in _REMOTE_CODE.items():
                with open(os.path.join(save_directory, name), "w") as f:
                    f.write(text)


def _shifted_loss(logits, labels, num_items_in_batch):
    """Cross-entropy (float32) of logits[:, :-1] (b, t, vocab) against labels[:, 1:] (b, t),
    -100 ignored: the mean, or the sum / num_items_in_batch when that is given."""
    if not isinstance(labels, torch.Tensor) or labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must be a tensor of the inputs' shape (b, t) = {tuple(logits.shape[:2])}, got "
                         f"{tuple(getattr(labels, 'shape', ())) or type(labels).__name__}")
    pred, target = logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten().to(logits.device)
    if num_items_in_batch is None:
        return F.cross_entropy(pred, target, ignore_index=-100)
    return F.cross_entropy(pred, target, ignore_index=-100, reduction="sum") / num_items_in_batch
