"""``SISAHFConfig``: ``SISAConfig`` as a ``transformers`` configuration (model_type "sisa")."""
from __future__ import annotations

import dataclasses

from transformers import PretrainedConfig

from ..model import SISAConfig

FIELDS = tuple(f.name for f in dataclasses.fields(SISAConfig))
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SISAConfig)}


class SISAHFConfig(PretrainedConfig):
    """The fields of ``sisa.SISAConfig`` (same names, defaults and validation), plus
    ``transformers``' own (``use_cache``, token ids, ...). The head is always tied
    to the embedding: ``tie_word_embeddings`` must stay True.

    Build one with ``SISAHFConfig(d_model=..., ...)``, ``SISAHFConfig.preset("152M",
    d_state=16)`` or ``SISAHFConfig.from_sisa_config(cfg)``; ``to_sisa_config()``
    gives the ``SISAConfig`` back. A bad field raises the ValueError or TypeError
    that ``SISAConfig`` raises, naming it.
    """

    model_type = "sisa"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
                     "intermediate_size": "d_ff"}

    def __init__(self, **kwargs):
        for name in FIELDS:
            setattr(self, name, kwargs.pop(name, _DEFAULTS[name]))
        if kwargs.setdefault("tie_word_embeddings", True) is not True:
            raise ValueError("tie_word_embeddings must be True: SISAModel's head is its embedding, "
                             f"got {kwargs['tie_word_embeddings']!r}")
        self.use_cache = kwargs.pop("use_cache", True)
        super().__init__(**kwargs)
        self.to_sisa_config()                                       # validates every field

    def to_sisa_config(self) -> SISAConfig:
        """The equivalent ``sisa.SISAConfig`` (validated)."""
        return SISAConfig(**{name: getattr(self, name) for name in FIELDS})

    @classmethod
    def from_sisa_config(cls, config: SISAConfig, **kwargs) -> "SISAHFConfig":
        """From a ``sisa.SISAConfig``; kwargs are ``transformers`` fields (e.g. eos_token_id)."""
        if not isinstance(config, SISAConfig):
            raise TypeError(f"config must be a sisa.SISAConfig, got {type(config).__name__}")
        return cls(**dataclasses.asdict(config), **kwargs)

    @classmethod
    def preset(cls, name: str, d_state: int = 16, use_ssm: bool = True, **overrides) -> "SISAHFConfig":
        """The paper's 50M / 152M / 369M shapes (``SISAConfig.preset``); overrides may
        be SISAConfig fields or ``transformers`` fields."""
        ours = {k: overrides.pop(k) for k in list(overrides) if k in FIELDS}
        return cls.from_sisa_config(SISAConfig.preset(name, d_state=d_state, use_ssm=use_ssm, **ours), **overrides)
