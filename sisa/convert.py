"""Load checkpoints written by the paper's reference code (docs/design.md section 2).

The paper keeps the attention projections directly on each block
(``layers.{i}.W_Q.weight``); ``SISAModel`` nests them under ``layers.{i}.attn``.
Everything else already has the same name. The authors' ``train.py`` saves the
state dict of a ``torch.compile``d model, so its keys carry an ``_orig_mod.``
prefix (and ``module.`` under DistributedDataParallel); both are stripped.

``sisa-convert SRC DST`` (``main``) turns such a file into a directory that
``transformers`` loads (``AutoModelForCausalLM.from_pretrained(DST)`` after
``import sisa.hf``, or with ``trust_remote_code=True``).
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping

import torch

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "W_B", "W_C", "alpha_proj", "theta_proj", "lambda_raw")
_PATTERN = re.compile(r"^layers\.(\d+)\.(%s)(\..+)?$" % "|".join(_ATTN))
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")       # torch.compile, DistributedDataParallel
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")


def _strip_wrappers(key: str) -> str:
    """``module._orig_mod.layers.0.W_Q.weight`` -> ``layers.0.W_Q.weight``."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def convert_reference_state_dict(sd: Mapping) -> dict:
    """Map a state dict with the paper's parameter names onto SISAModel's.

    sd: a mapping of str names to tensors (a TypeError names the argument or the key
    otherwise), as saved by the reference code, with or without the ``_orig_mod.``
    prefix of a ``torch.compile``d model (and ``module.`` of DDP). A separate
    ``lm_head.weight`` (the tied head) is dropped after checking it equals
    ``embed.weight``; unknown keys raise KeyError, and a name that appears twice
    (with and without a prefix) a ValueError, so nothing is silently lost. The
    tensors are passed through, not copied.
    """
    if not isinstance(sd, Mapping):
        raise TypeError(f"sd (the state dict) must be a mapping of names to tensors, got {type(sd).__name__}")
    for key, value in sd.items():
        if not isinstance(key, str):
            raise TypeError(f"sd (the state dict) must have str keys, got {type(key).__name__} {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"sd[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():        # int weights cannot train, complex ones would lose a part
            raise TypeError(f"sd[{key!r}] must be a floating-point tensor (weights), got dtype {value.dtype}")
    plain = {}
    for key, value in sd.items():
        name = _strip_wrappers(key)
        if name in plain:
            raise ValueError(f"sd holds {name!r} twice (as {key!r} and under another prefix)")
        plain[name] = value
    out = {}
    for key, value in plain.items():
        m = _PATTERN.match(key)
        if m:
            out[f"layers.{m.group(1)}.attn.{m.group(2)}{m.group(3) or ''}"] = value
        elif key == "lm_head.weight":
            if "embed.weight" in plain and not plain["embed.weight"].equal(value):
                raise ValueError("lm_head.weight differs from embed.weight, but SISAModel ties them")
        elif re.match(r"^(embed\.weight|final_norm\.weight|layers\.\d+\.(attn_norm|ffn_norm)\.weight"
                      r"|layers\.\d+\.ffn\.(w_gate|w_up|w_down)\.weight)$", key):
            out[key] = value
        else:
            raise KeyError(f"unexpected key in the reference state dict: {key!r}")
    return out


def unwrap_checkpoint(obj) -> Mapping:
    """The state dict inside a loaded checkpoint: the mapping itself when its values
    are tensors, else the one under "model", "state_dict" or "model_state_dict" (a
    training checkpoint that also holds the optimizer, step, config...). Anything
    else raises a ValueError saying what was found."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"the checkpoint must be a state dict (a mapping of names to tensors) or a dict holding "
                         f"one under {' / '.join(map(repr, _WRAPPER_KEYS))}, got {type(obj).__name__}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    found = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:8])
    raise ValueError(f"the checkpoint holds no state dict: expected tensors, or a mapping of tensors under "
                     f"{' / '.join(map(repr, _WRAPPER_KEYS))}; found {{{found}}}")


def load_reference_checkpoint(path: str | os.PathLike) -> dict:
    """Read a reference checkpoint file as data (``torch.load(weights_only=True)``, or
    safetensors for ``*.safetensors``), unwrap it and convert its names: a state dict
    for ``SISAModel.load_state_dict``. A file that is not such a checkpoint raises a
    ValueError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; give the checkpoint file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # a pickle with code in it, a truncated file, not a checkpoint at all
        raise ValueError(f"cannot read {path!r} as a checkpoint of tensors (read with weights_only=True, so "
                         f"pickled Python objects other than tensors and plain containers are refused): {e}") from e
    try:
        return convert_reference_state_dict(unwrap_checkpoint(obj))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path!r}: {e}") from e


def infer_config(sd: Mapping, n_heads: int | None = None, **fields):
    """The ``SISAConfig`` a converted state dict implies: vocab_size and d_model from
    the embedding, n_layers, d_ff, use_ssm, and with SSM parameters n_heads (from
    lambda_raw), d_state and n_kv_heads. ``n_heads`` must be given for a baseline
    (use_ssm False: nothing in the weights says it); ``fields`` sets what the shapes
    cannot say (rope_base, norm_eps, backend). A shape that disagrees raises."""
    from .model import SISAConfig
    try:
        vocab, d_model = sd["embed.weight"].shape
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
        d_ff = sd["layers.0.ffn.w_gate.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"the state dict lacks what fixes the model's shape (embed.weight, layers.*, "
                         f"layers.0.ffn.w_gate.weight): {e!r}") from e
    use_ssm = "layers.0.attn.lambda_raw" in sd
    if use_ssm:
        if sd["layers.0.attn.lambda_raw"].dim() != 1:
            raise ValueError(f"layers.0.attn.lambda_raw must be 1-D (one value per head), got shape "
                             f"{tuple(sd['layers.0.attn.lambda_raw'].shape)}")
        h = sd["layers.0.attn.lambda_raw"].shape[0]
        if n_heads is not None and n_heads != h:
            raise ValueError(f"n_heads={n_heads} disagrees with lambda_raw's {h} heads")
        n_heads = h
    elif n_heads is None:
        raise ValueError("n_heads must be given for a model without SSM parameters (use_ssm False)")
    try:
        d_state = sd["layers.0.attn.W_B.weight"].shape[0] // n_heads if use_ssm else fields.pop("d_state", 16)
        head_dim = d_model // n_heads
        n_kv = sd["layers.0.attn.W_K.weight"].shape[0] // head_dim
    except (KeyError, IndexError, ZeroDivisionError) as e:
        raise ValueError(f"the state dict's attention weights do not fit a SISA model (W_B, W_K of layer 0 "
                         f"with {n_heads} heads): {e!r}") from e
    cfg = SISAConfig(vocab_size=vocab, d_model=d_model, n_heads=n_heads, n_layers=layers, d_state=d_state,
                     d_ff=d_ff, n_kv_heads=None if n_kv == n_heads else n_kv, use_ssm=use_ssm, **fields)
    return cfg


def main(argv=None) -> int:
    """sisa-convert SRC DST: a reference checkpoint -> a transformers directory."""
    parser = argparse.ArgumentParser(prog="sisa-convert", description=(
        "Convert a checkpoint of the paper's reference code (a state dict, with or without torch.compile's "
        "_orig_mod. prefix, possibly under 'model' or 'state_dict') into a directory that transformers loads: "
        "AutoModelForCausalLM.from_pretrained(DST) after 'import sisa.hf', or with trust_remote_code=True."))
    parser.add_argument("src", help="checkpoint file (.pt/.pth/.bin via torch.load(weights_only=True), or .safetensors)")
    parser.add_argument("dst", help="output directory (config.json, model.safetensors)")
    parser.add_argument("--n-heads", type=int, default=None,
                        help="attention heads (read from lambda_raw when the model has SSM parameters)")
    parser.add_argument("--rope-base", type=float, default=10000.0)
    parser.add_argument("--norm-eps", type=float, default=1e-6)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast the weights (lambda_raw stays float32); default: as stored")
    args = parser.parse_args(argv)
    if os.path.exists(args.dst) and not os.path.isdir(args.dst):
        parser.error(f"dst {args.dst!r} is an existing file; give a directory (new or existing) to write into")
    try:
        import sisa.hf as hf
    except ImportError as e:
        parser.error(f"sisa-convert needs the [hf] extra (pip install 'sisa[hf]'): {e}")
    try:
        sd = load_reference_checkpoint(args.src)
        cfg = infer_config(sd, n_heads=args.n_heads, rope_base=args.rope_base, norm_eps=args.norm_eps)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e))
    stored = sd["embed.weight"].dtype
    model = hf.SISAForCausalLM(hf.SISAHFConfig.from_sisa_config(cfg)).to(stored)   # load without rounding
    try:
        model.model.load_state_dict(sd, strict=True)
    except RuntimeError as e:                  # a missing or extra key, a shape that disagrees
        parser.error(f"{args.src!r} does not fit the inferred config {cfg}: {e}")
    dtype = stored if args.dtype is None else getattr(torch, args.dtype)
    model.to(dtype).save_pretrained(args.dst)
    print(f"wrote {args.dst}: {cfg}, {dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
