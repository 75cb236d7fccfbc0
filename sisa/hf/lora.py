"""Module names to put PEFT adapters (LoRA and the like) on in ``SISAForCausalLM``.

Every matrix of a block is a bias-free ``nn.Linear``, so LoRA trains, saves and merges
on any of them exactly as on a Llama's. Pass the names explicitly::

    LoraConfig(task_type="CAUSAL_LM", target_modules=list(sisa.hf.LORA_TARGET_MODULES))

PEFT (0.21) takes a missing ``target_modules`` from a module-level table keyed by
``model_type``; it has no registration API, and sisa does not edit another package's
constants, so ``LoraConfig`` without ``target_modules`` raises PEFT's "Please
specify `target_modules`" for ``sisa``.

- ``LORA_TARGET_MODULES``: the attention projections W_Q, W_K, W_V, W_O (the usual
  choice; what PEFT's defaults cover for other models).
- ``LORA_SSM_TARGET_MODULES``: W_B and W_C, the SSM branch's B and C projections
  (d_model -> heads * d_state), which set the importance term added to the score.
  Add them to adapt which past tokens the SSM term favours. The decay and rotation
  rates (alpha_proj, theta_proj: d_model -> heads, heads * d_state / 2) are small
  enough to train in full through PEFT's ``modules_to_save`` instead.
- ``LORA_FFN_TARGET_MODULES``: the SwiGLU FFN's w_gate, w_up, w_down.
"""

LORA_TARGET_MODULES = ("W_Q", "W_K", "W_V", "W_O")
LORA_SSM_TARGET_MODULES = ("W_B", "W_C")
LORA_FFN_TARGET_MODULES = ("w_gate", "w_up", "w_down")
