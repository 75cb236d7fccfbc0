"""The safety net: when no config of a kernel's table launches on this device (made
to happen here by injecting Triton's OutOfResources into every launch), the call
runs an exact path instead, the result still matches the float64 reference, and
exactly one warning names the kernel and the device (warnings and the ``sisa``
logger). Runs under the CPU interpreter (tests/conftest.py)."""
import functools
import logging
import warnings

import pytest
import torch

from conftest import DEVICE, kernels_or_skip

kernels_or_skip()
import sisa  # noqa: E402
from sisa.testing import Case, compare  # noqa: E402
from sisa_kernels import attention, attention_bwd, decode, errors, scan  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402


class Failing:
    """Stands in for a Triton kernel whose every launch runs out of shared memory."""

    def __init__(self, name):
        self.__name__, self.launches = name, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            raise OutOfResources(300_000, 232_448, "shared memory")
        return launch


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallbacks have warned (each test counts its own)."""
    monkeypatch.setattr(errors, "_WARNED", set())


def fallback_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "cannot launch" in str(w.message)]


CASE = Case(1, 33, 4, 2, 40, 16, decay=0.5)


def _triton(*args):
    return sisa.sisa_attention(*args, backend="triton")


@pytest.mark.parametrize("module, kernel", [(attention, "_sisa_fwd_kernel"), (scan, "_scan_fwd_kernel")])
def test_forward_falls_back_exactly_once_warned(module, kernel, monkeypatch, fresh_warnings, caplog):
    failing = Failing(kernel)
    monkeypatch.setattr(module, kernel, failing)
    with warnings.catch_warnings(record=True) as record, caplog.at_level(logging.WARNING, logger="sisa"):
        warnings.simplefilter("always")
        for _ in range(2):                    # the second call: no second warning
            report = compare(_triton, CASE, torch.float32, DEVICE, grads=False)
            assert report.ok, report
    assert failing.launches >= 2
    got = fallback_warnings(record)
    assert len(got) == 1, [str(w.message) for w in record]
    msg = str(got[0].message)
    assert kernel in msg and "report" in msg and "cpu" in msg, msg
    assert [r for r in caplog.records if r.name == "sisa" and kernel in r.getMessage()], caplog.records


@pytest.mark.parametrize("module, kernel", [(attention_bwd, "_sisa_bwd_dq_kernel"),
                                            (attention_bwd, "_sisa_bwd_delta_kernel"),
                                            (scan, "_scan_bwd_kernel")])
def test_backward_falls_back_to_exact_gradients(module, kernel, monkeypatch, fresh_warnings):
    monkeypatch.setattr(module, kernel, Failing(kernel))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        report = compare(_triton, CASE, torch.float32, DEVICE, grads=True)
    assert report.ok, report
    assert len(fallback_warnings(record)) == 1, [str(w.message) for w in record]


def test_packed_sequences_fall_back_per_sequence(monkeypatch, fresh_warnings):
    """A packed batch whose fused attention cannot launch: each sequence on the exact
    path, equal to running the sequences one by one through the reference."""
    monkeypatch.setattr(attention, "_sisa_fwd_kernel", Failing("_sisa_fwd_kernel"))
    from sisa.testing import make_inputs
    x = make_inputs(Case(1, 20, 2, 1, 16, 4), torch.float32, DEVICE)
    cu = torch.tensor([0, 7, 20], dtype=torch.int32, device=DEVICE)
    with pytest.warns(RuntimeWarning, match="cannot launch"):
        out = sisa.sisa_attention(*x.values(), backend="triton", cu_seqlens=cu)
    x64 = {k: v.double() for k, v in x.items()}
    ref = sisa.sisa_attention(*x64.values(), backend="naive", cu_seqlens=cu)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_decode_raises_the_package_error(monkeypatch, fresh_warnings):
    """The decode launcher's error once its whole table fails: the one sisa.cache
    catches to run its exact path."""
    monkeypatch.setattr(decode, "_decode_split_kernel", Failing("_decode_split_kernel"))
    b, s, t, h, d, n = 1, 1, 8, 2, 16, 4
    r = functools.partial(torch.randn, device=DEVICE)
    with pytest.raises(errors.KernelLaunchError, match="_decode_split_kernel"):
        decode.sisa_decode(r(b, s, h, d), r(b, t, h, d), r(b, t, h, d), r(b, s, h, n), r(b, t, h, n),
                           -torch.rand(b, t, h, device=DEVICE).cumsum(1), torch.ones(h, device=DEVICE))
