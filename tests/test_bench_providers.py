"""benchmarks.providers' GPU baselines: FlexAttention and fla's forgetting attention."""
import torch

from benchmarks import gate
from benchmarks.providers import PROVIDERS, Shape, make_inputs

CPU = torch.device("cpu")


def test_flex_provider_computes_plain_causal_attention():
    # Eager FlexAttention on a CPU (forward only there): the wrapper's layout, mask and GQA.
    for kv_heads in (4, 2):
        x = make_inputs("plain", Shape(1, 80, 4, kv_heads, 16, None, torch.float32), CPU, seed=kv_heads)
        x = {k: v.detach() for k, v in x.items()}
        want = gate.judge("plain", {k: v.double() for k, v in x.items()})[0]
        got = PROVIDERS["flex"].run(x, True)[0]
        assert gate._rel_err(got, want) < 1e-5


def test_gpu_providers_say_why_they_do_not_run_on_a_cpu():
    shape = Shape(1, 64, 4, 4, 16, None, torch.float32)
    for name in ("flex", "fla-forgetting"):
        reason = PROVIDERS[name].unsupported(shape, CPU, 1024)
        assert reason and "GPU" in reason
        assert PROVIDERS[name].kind == "plain"


def test_fla_provider_reports_a_missing_package():
    from benchmarks import providers
    fn, reason = providers._fla_forgetting_attn()
    assert (fn is None) == (reason is not None)
    if fn is None:
        assert reason.startswith("fla not importable")
