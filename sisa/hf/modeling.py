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


class SISAPreTrainedModel(PreTrainedModel):
    config_class = SISAHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # lambda_raw stays float32 in a 16-bit model (the paper keeps it so; SISAAttention does on .to()).
    _keep_in_fp32_modules_strict = ["lambda_raw"]
    supports_gradient_checkpointing = False

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
    """forward(input_ids (b, t), attention_mask (b, t) or (b, cached + t) of 0/1,
    labels (b, t), past_key_values / cache (SISACache), use_cache) ->
    CausalLMOutputWithPast(loss, logits (b, t, vocab), cache).

    use_cache None means config.use_cache (True by default) outside training; with it
    a new SISACache is made when none is passed and returned in the output.

    Pads (attention_mask 0) follow ``SISAModel.forward``'s rule: each real token's
    logits equal those of its row with the pads deleted; pads add no decay, no
    rotation, are never keys and do not advance positions. ``position_ids`` is
    accepted because ``generate`` passes it, and ignored: positions are the count of
    real tokens before each token (what ``generate`` computes from the mask, too).
    """

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
        return False                    # generate must not make a DynamicCache: forward makes a SISACache

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return None                     # tied: SISAModel multiplies by embed.weight

    def forward(self, input_ids=None, attention_mask=None, labels=None, past_key_values=None, use_cache=None,
                position_ids=None, inputs_embeds=None, return_dict=None, logits_to_keep=0, cache=None, **kwargs):
        """See the class docstring. labels: (b, t) token ids, -100 ignored; the loss is
        the mean cross-entropy of logits[:, :-1] against labels[:, 1:] (in float32)."""
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by SISAForCausalLM: pass input_ids")
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
        logits = self.model(input_ids, caches=None if cache is None else cache.layer_caches,
                            attention_mask=attention_mask)
        loss = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                raise ValueError(f"labels must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got "
                                 f"{tuple(getattr(labels, 'shape', ())) or type(labels).__name__}")
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            logits = logits[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})
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
