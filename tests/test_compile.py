"""torch.compile(fullgraph=True) traces a SISA model on the Triton backend: the
scan and attention kernels are custom ops with fake implementations, and the
dispatch code in ``sisa`` stays traceable (no graph breaks)."""
import pytest
import torch

import sisa

from conftest import DEVICE

reason = sisa.backends.triton_unavailable_reason(DEVICE)


def test_model_compiles_without_graph_breaks_and_matches_eager():
    if reason is not None:
        pytest.skip(f"Triton unavailable: {reason}")
    torch.manual_seed(0)
    cfg = sisa.SISAConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=1, d_state=4, d_ff=48, backend="triton")
    model = sisa.SISAModel(cfg).to(DEVICE)
    ids = torch.randint(0, 64, (1, 16), device=DEVICE)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(ids)
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(ids)
    ref.square().mean().backward()
    torch.testing.assert_close(out, ref)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)
