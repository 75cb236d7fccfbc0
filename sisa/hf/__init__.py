"""Hugging Face ``transformers`` integration (``pip install sisa[hf]``).

Importing this module registers ``SISAHFConfig`` (model_type "sisa") with
``AutoConfig`` and ``SISAForCausalLM`` with ``AutoModelForCausalLM``, so
``AutoModelForCausalLM.from_pretrained(dir)`` works after ``import sisa.hf``.
The core ``sisa`` package never imports transformers.
"""
try:
    from transformers import AutoConfig, AutoModelForCausalLM
except ImportError as exc:   # the optional extra
    raise ImportError(f"sisa.hf needs the [hf] extra: pip install 'sisa[hf]' ({exc})") from exc

from .cache import SISACache, SISACacheLayer
from .config import SISAHFConfig
from .lora import LORA_FFN_TARGET_MODULES, LORA_SSM_TARGET_MODULES, LORA_TARGET_MODULES
from .modeling import SISAForCausalLM, SISAPreTrainedModel

AutoConfig.register(SISAHFConfig.model_type, SISAHFConfig, exist_ok=True)
AutoModelForCausalLM.register(SISAHFConfig, SISAForCausalLM, exist_ok=True)

__all__ = ["SISAHFConfig", "SISAForCausalLM", "SISAPreTrainedModel", "SISACache", "SISACacheLayer",
           "LORA_TARGET_MODULES", "LORA_SSM_TARGET_MODULES", "LORA_FFN_TARGET_MODULES"]
