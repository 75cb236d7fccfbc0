"""How the attention launchers choose tile configs (sisa_kernels.configs): a fixed
table, the same in every process; the autotuner only when asked, keyed on a length
bucket; explicit configs and the interpreter's square blocks as before."""
import pytest

from conftest import kernels_or_skip

kernels_or_skip()
from sisa_kernels import configs  # noqa: E402


def test_every_listed_config_fits_its_kernel():
    """Block rows a multiple of block cols (the diagonal loops need it), at least 16
    (tl.dot), 16-row tiles only at head dim 256, warps 4 or 8; every width class has a
    choice."""
    for (kind, d, n), cfgs in configs.SAFE.items():
        for rows, cols, warps, stages in cfgs:
            assert rows % cols == 0 and rows >= 16 and warps in (4, 8) and stages in (2, 3), (kind, d, n)
            assert rows >= 32 or d == 256, (kind, d, n)
    for kind in ("fwd", "dq", "dkv"):
        for d in configs.D_CLASSES:
            for n in configs.N_CLASSES:
                assert configs.candidates(kind, d, n), (kind, d, n)


@pytest.mark.parametrize("d_pad, n_pad, cls", [(16, 16, (64, 16)), (64, 32, (64, 64)), (128, 16, (128, 16)),
                                               (256, 128, (256, 128)), (512, 256, (256, 128)),
                                               (256, 16, (256, 64)), (256, 32, (256, 64))])
def test_width_classes_round_up(d_pad, n_pad, cls):
    assert configs.width_class(d_pad, n_pad) == cls


def test_pick_is_the_first_safe_config_and_deterministic():
    assert configs.pick("fwd", 64, 16) == dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    assert configs.pick("dkv", 128, 128) == dict(BLOCK_OUT=32, BLOCK_IN=16, num_warps=4, num_stages=2)


def test_length_bucket():
    assert [configs.length_bucket(t) for t in (1, 128, 129, 1000, 4096, 4097)] == [128, 128, 256, 1024, 4096, 8192]


class Recorder:
    """Stands in for a Triton kernel: records the launch keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(kwargs)


@pytest.mark.parametrize("mode", ["interpreter", "table", "autotune", "explicit"])
def test_launch_modes(mode, monkeypatch):
    kernel, tuned = Recorder(), Recorder()
    monkeypatch.setenv("TRITON_INTERPRET", "1" if mode == "interpreter" else "0")
    monkeypatch.setenv("SISA_AUTOTUNE", "1" if mode == "autotune" else "0")
    config = dict(BLOCK_M=32, BLOCK_N=16) if mode == "explicit" else None
    consts = dict(D_PAD=64, N_PAD=16)
    configs.launch(kernel, tuned, "fwd", (1,), (), consts, config, t=100)
    expected = {"interpreter": (kernel, dict(BLOCK_M=16, BLOCK_N=16)),
                "table": (kernel, configs.pick("fwd", 64, 16)),
                "autotune": (tuned, {}),
                "explicit": (kernel, config)}[mode]
    who, extra = expected
    assert who.calls == [{**consts, **extra}] and (kernel if who is tuned else tuned).calls == []


def test_autotuner_prunes_to_the_safe_list():
    prune = configs._prune("dkv")
    import triton
    space = [triton.Config({"BLOCK_OUT": r, "BLOCK_IN": c}, num_warps=w, num_stages=s)
             for r, c, w, s in [(128, 32, 8, 2), (64, 16, 8, 2), (32, 16, 4, 2)]]
    kept = prune(space, {"D_PAD": 128, "N_PAD": 64})
    assert [(c.kwargs["BLOCK_OUT"], c.kwargs["BLOCK_IN"], c.num_warps) for c in kept] == [(64, 16, 8), (32, 16, 4)]
