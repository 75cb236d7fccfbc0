"""``python -m sisa.parity``: passes a correct backend, fails a broken one."""
import re

import pytest
import torch

import sisa.parity
from sisa.naive import naive_sisa_attention

ARGS = ["--dtypes", "float32", "--no-long", "--backends", "sdpa", "--device", "cpu"]


def rows(text):
    return [line for line in text.splitlines() if line.startswith("sdpa ")]


def test_parity_passes_and_prints_table(capsys):
    assert sisa.parity.main(ARGS) == 0
    out = capsys.readouterr().out
    assert re.search(r"backend\s+dtype\s+case\s+fwd err\s+fwd tol", out)
    body = rows(out)
    assert len(body) == len(sisa.parity.GRID)
    for line in body:
        assert line.split()[1] == "float32" and line.rstrip().endswith("ok"), line
        fwd_err, fwd_tol = (float(x) for x in line.split()[-5:-3])
        assert fwd_err <= fwd_tol
    assert f"{len(body)} passed, 0 failed" in out


def _drop_ssm_term(q, k, v, C, B, log_alpha, theta, lam, backend=None, **kw):
    """A plausible-looking wrong backend: forgets the SSM score bias."""
    return naive_sisa_attention(q, k, v, C, B, log_alpha, theta, lam * 1e-9)


def test_parity_fails_a_wrong_backend(monkeypatch, capsys):
    monkeypatch.setattr(sisa.parity, "sisa_attention", _drop_ssm_term)
    assert sisa.parity.main(ARGS) == 1
    out = capsys.readouterr().out
    fails = [line for line in rows(out) if line.rstrip().endswith("FAIL")]
    assert len(fails) >= len(sisa.parity.GRID) - 1       # t=1 has no off-diagonal terms to miss
    assert re.search(r"\d+ passed, [1-9]\d* failed", out)


def test_parity_fails_a_slightly_wrong_gradient(monkeypatch, capsys):
    """Forward exact, one gradient (dlam) off by 1%: still a failure."""
    class Scale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, lam):
            return lam.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 1.01

    def wrong(q, k, v, C, B, log_alpha, theta, lam, backend=None, **kw):
        return naive_sisa_attention(q, k, v, C, B, log_alpha, theta, Scale.apply(lam))

    monkeypatch.setattr(sisa.parity, "sisa_attention", wrong)
    assert sisa.parity.main(ARGS) == 1
    out = capsys.readouterr().out
    assert any(" lam " in line and line.rstrip().endswith("FAIL") for line in rows(out))


def test_parity_reports_a_crash_as_failure(monkeypatch, capsys):
    def crash(*a, **kw):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(sisa.parity, "sisa_attention", crash)
    assert sisa.parity.main(ARGS) == 1
    out = capsys.readouterr().out
    assert out.count("ERROR RuntimeError: kernel exploded") == len(sisa.parity.GRID)


# ---------------------------------------------------------------- choosing backends

FAST = ["--dtypes", "float32", "--no-long", "--device", "cpu"]


@pytest.mark.parametrize("names", [["bogus"], ["naive", "bogus"], ["auto"]])
def test_unknown_backend_is_one_usage_error(names, capsys):
    with pytest.raises(SystemExit) as info:
        sisa.parity.main(FAST + ["--backends", *names])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert "backend" not in out                           # nothing ran
    assert err.count("--backends") == 2 and "naive, sdpa, triton" in err, err   # usage line + one error line


def test_unusable_device_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        sisa.parity.main(["--device", "nosuchdevice", "--backends", "naive"])
    assert info.value.code == 2
    assert "--device" in capsys.readouterr().err


def test_default_backends_say_why_one_is_skipped(monkeypatch, capsys):
    monkeypatch.setattr(sisa.parity, "triton_unavailable_reason", lambda device: "no Triton on this test machine")
    monkeypatch.setattr(sisa.parity, "GRID", sisa.parity.GRID[:2])
    assert sisa.parity.main(FAST) == 0
    out = capsys.readouterr().out
    skips = [line for line in out.splitlines() if "skipping" in line]
    assert skips == ["skipping backend 'triton' on cpu: no Triton on this test machine"], out
    assert "backends ['naive', 'sdpa']" in out


def test_requested_unavailable_backend_fails_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(sisa.parity, "triton_unavailable_reason", lambda device: "no Triton on this test machine")
    assert sisa.parity.main(FAST + ["--backends", "naive", "triton"]) == 2
    out, err = capsys.readouterr()
    assert "triton" in err and "no Triton on this test machine" in err, err
    assert "fwd err" not in out                           # failed before running anything


def test_repeated_backend_runs_once(capsys):
    assert sisa.parity.main(FAST + ["--backends", "sdpa", "sdpa"]) == 0
    assert len(rows(capsys.readouterr().out)) == len(sisa.parity.GRID)


@pytest.mark.parametrize("argv", [["--dtypes", "--no-long"], ["--backends", "naive", "--dtypes", "float64", "--no-long"],
                                  ["--backends", "naive", "--dtypes", "float64"]],
                         ids=["no dtypes", "naive float64", "naive float64 with long"])
def test_a_run_that_checks_nothing_fails(argv, capsys):
    """These printed '0 passed, 0 failed' and exited 0: a usage error that says why."""
    with pytest.raises(SystemExit) as exc:
        sisa.parity.main(argv + ["--device", "cpu"])
    assert exc.value.code == 2
    assert "nothing to check" in capsys.readouterr().err
