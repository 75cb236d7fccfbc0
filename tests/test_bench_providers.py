"""Benchmark hygiene: the GPU baselines (FlexAttention, fla forgetting attention) and
the --threads of benchmarks.ratio and the pytest-benchmark suite."""
from pathlib import Path

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


def test_ratio_pins_and_prints_its_threads(tmp_path, capsys):
    from benchmarks import ratio
    before = torch.get_num_threads()
    argv = ["--device", "cpu", "--seqlen", "32", "--heads", "2", "--d-head", "16", "--d-state", "4",
            "--modes", "fwd", "--pairs", "2", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]
    assert ratio.main(argv) == 0
    assert "torch threads 1 (--threads)" in capsys.readouterr().err
    assert "torch threads 1" in (tmp_path / "ratio.md").read_text()
    assert torch.get_num_threads() == before


def test_pytest_benchmark_suite_prints_its_threads():
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--co", "--threads", "1",
                          "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch threads: 1 (--threads)" in out.stdout
