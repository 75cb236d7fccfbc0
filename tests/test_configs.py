"""How the launchers choose tile configs (sisa_kernels.configs): one table per
architecture family chosen from the device's capability and shared memory (read once
per device), the same in every process; the autotuner only when asked; a launch that
fails moves to the next entry, and the package error once none launches."""
import pytest
import torch

from conftest import kernels_or_skip

kernels_or_skip()
from sisa_kernels import configs, errors  # noqa: E402
from sisa_kernels.configs import device  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

KIB = 1024
# Each listed arch's (capability, opt-in shared memory per block) and its family.
ARCHES = {"sm_80": ((8, 0), 163 * KIB, "sm80"), "sm_86": ((8, 6), 99 * KIB, "sm86"),
          "sm_89": ((8, 9), 99 * KIB, "sm86"), "sm_90": ((9, 0), 227 * KIB, "sm90"),
          "sm_100": ((10, 0), 227 * KIB, "sm100"), "sm_103": ((10, 3), 227 * KIB, "sm100"),
          "sm_120": ((12, 0), 99 * KIB, "sm120")}


def test_every_table_entry_fits_its_kernel():
    """Block rows a multiple of block cols (the diagonal loops need it), at least 16
    (tl.dot); every family and dtype class has entries for every width class and
    every other kernel."""
    for fam, mod in configs.TABLES.items():
        for tab in (mod.ATTENTION, mod.ATTENTION_FP32):
            for (kind, d, n), cfgs in tab.items():
                assert cfgs, (fam, kind, d, n)
                for rows, cols, warps, stages, maxnreg in map(configs.full_entry, cfgs):
                    assert rows % cols == 0 and rows >= 16 and cols >= 16, (fam, kind, d, n)
                    assert warps in (2, 4, 8) and stages in (1, 2, 3), (fam, kind, d, n)
                    assert maxnreg is None or 128 <= maxnreg <= 255, (fam, kind, d, n)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for kind in configs.ATTENTION_KINDS:
                for d in configs.D_CLASSES:
                    for n in configs.N_CLASSES:
                        assert configs.candidates(kind, d, n, fam, dtype), (fam, kind, d, n)
            for kind in configs.OTHER_KINDS:
                assert configs.others(kind, fam, dtype), (fam, kind)


@pytest.mark.parametrize("arch", ARCHES)
def test_each_arch_gets_its_family(arch):
    cc, smem, fam = ARCHES[arch]
    assert device.family_for(cc, smem) == fam
    assert device.FAMILIES[fam][1] <= smem


@pytest.mark.parametrize("cc, smem", [((8, 7), 163 * KIB), ((11, 0), 227 * KIB), ((9, 0), 99 * KIB),
                                      ((7, 5), 64 * KIB), ((13, 0), 99 * KIB), ((12, 1), 99 * KIB)])
def test_unknown_devices_get_a_family_that_fits(cc, smem):
    """Nearest capability among the families whose tables fit the device's shared
    memory; below every family's limit, the smallest (the runtime net then walks its
    entries down to the smallest tiles)."""
    fam = device.family_for(cc, smem)
    smallest = min(limit for _, limit in device.FAMILIES.values())
    assert device.FAMILIES[fam][1] <= max(smem, smallest), (cc, smem, fam)


@pytest.mark.parametrize("d_pad, n_pad, cls", [(16, 16, (64, 16)), (64, 32, (64, 64)), (128, 16, (128, 16)),
                                               (256, 128, (256, 128)), (512, 256, (256, 128)),
                                               (256, 16, (256, 64)), (256, 32, (256, 64))])
def test_width_classes_round_up(d_pad, n_pad, cls):
    assert configs.width_class(d_pad, n_pad) == cls


def test_length_bucket():
    assert [configs.length_bucket(t) for t in (1, 128, 129, 1000, 4096, 4097)] == [128, 128, 256, 1024, 4096, 8192]


class Recorder:
    """Stands in for a Triton kernel: records the launch keyword arguments; the first
    ``fail`` launches raise OutOfResources."""

    def __init__(self, fail=0):
        self.calls, self.fail, self.__name__ = [], fail, "recorded_kernel"

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(kwargs)
            if len(self.calls) <= self.fail:
                raise OutOfResources(300_000, 101_376, "shared memory")
        return launch


@pytest.fixture
def on_gpu(monkeypatch):
    """A compiled (not interpreted) launch on a stand-in GPU: returns a function that
    sets the device the query reports."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("SISA_AUTOTUNE", raising=False)
    queries = []

    def use(cc, smem, name="stand-in GPU"):
        device.clear_cache()
        monkeypatch.setattr(device, "query", lambda dev: queries.append(dev) or device.DeviceInfo(name, cc, smem))
    yield use, queries
    device.clear_cache()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_launcher_picks_from_its_family_table_once_queried(arch, dtype, on_gpu):
    use, queries = on_gpu
    cc, smem, fam = ARCHES[arch]
    use(cc, smem)
    kernel = Recorder()
    consts = dict(D_PAD=128, N_PAD=64)
    for _ in range(3):
        configs.launch(kernel, None, "dq", (1,), (), consts, None, 100, torch.device("cuda", 0), dtype)
    table = configs.candidates("dq", 128, 64, fam, dtype)
    assert all(c == {**consts, **configs.as_kwargs("dq", table[0])} for c in kernel.calls)
    assert len(queries) == 1                         # read once per device, then cached


def test_a_failing_launch_moves_to_the_next_entry(on_gpu):
    use, _ = on_gpu
    use((8, 6), 99 * KIB)
    table = configs.candidates("fwd", 128, 128, "sm86", torch.bfloat16)
    assert len(table) >= 2
    kernel = Recorder(fail=1)
    configs.launch(kernel, None, "fwd", (1,), (), dict(D_PAD=128, N_PAD=128), None, 100, torch.device("cuda", 0),
                   torch.bfloat16)
    assert [{k: c[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")} for c in kernel.calls] == \
        [configs.as_kwargs("fwd", cfg) for cfg in table[:2]]


def test_when_no_entry_launches_the_package_error_names_kernel_and_gpu(on_gpu):
    use, _ = on_gpu
    use((12, 0), 99 * KIB, "NVIDIA GeForce RTX 5090")
    kernel = Recorder(fail=99)
    with pytest.raises(errors.KernelLaunchError, match="recorded_kernel.*RTX 5090") as info:
        configs.launch(kernel, None, "dkv", (1,), (), dict(D_PAD=64, N_PAD=16), None, 100,
                       torch.device("cuda", 0), torch.float16)
    assert len(kernel.calls) == len(configs.candidates("dkv", 64, 16, "sm120", torch.float16))
    assert isinstance(info.value.__cause__, OutOfResources) and info.value.family == "sm120"


def test_other_errors_are_not_swallowed(on_gpu):
    use, _ = on_gpu
    use((9, 0), 227 * KIB)

    class Broken(Recorder):
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise ValueError("a bug, not a resource limit")
            return launch
    with pytest.raises(ValueError, match="a bug"):
        configs.launch(Broken(), None, "fwd", (1,), (), dict(D_PAD=64, N_PAD=16), None, 100,
                       torch.device("cuda", 0), torch.bfloat16)


@pytest.mark.parametrize("mode", ["interpreter", "autotune", "explicit"])
def test_launch_modes(mode, monkeypatch):
    kernel, tuned = Recorder(), Recorder()
    monkeypatch.setenv("TRITON_INTERPRET", "1" if mode == "interpreter" else "0")
    monkeypatch.setenv("SISA_AUTOTUNE", "1" if mode == "autotune" else "0")
    monkeypatch.setattr(device, "query", lambda dev: device.DeviceInfo("stand-in", (9, 0), 227 * KIB))
    device.clear_cache()
    config = dict(BLOCK_M=32, BLOCK_N=16) if mode == "explicit" else None
    consts = dict(D_PAD=64, N_PAD=16)
    configs.launch(kernel, tuned, "fwd", (1,), (), consts, config, 100, torch.device("cuda", 0), torch.bfloat16)
    device.clear_cache()
    expected = {"interpreter": (kernel, dict(BLOCK_M=16, BLOCK_N=16)), "autotune": (tuned, {}),
                "explicit": (kernel, config)}[mode]
    who, extra = expected
    assert who.calls == [{**consts, **extra}] and (kernel if who is tuned else tuned).calls == []


def test_autotuner_prunes_to_the_calls_family_table(monkeypatch):
    import triton
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(device, "query", lambda dev: device.DeviceInfo("stand-in", (8, 0), 163 * KIB))
    device.clear_cache()
    prune = configs.launch_module._prune("dkv")
    table = configs.candidates("dkv", 128, 64, "sm80", torch.bfloat16)
    space = [triton.Config({"BLOCK_OUT": r, "BLOCK_IN": c}, num_warps=w, num_stages=s)
             for r, c, w, s in sorted(set(table) | {(128, 64, 8, 3)})]
    q = torch.empty(1, device="meta", dtype=torch.bfloat16)
    kept = prune(space, {"Q": q, "D_PAD": 128, "N_PAD": 64})
    device.clear_cache()
    assert {(c.kwargs["BLOCK_OUT"], c.kwargs["BLOCK_IN"], c.num_warps, c.num_stages) for c in kept} == set(table)


def test_a_register_cap_reaches_the_launch_and_the_autotuner(on_gpu):
    """A five-field entry (fp32.py's caps) launches with Triton's maxnreg; a four-field one
    without it; the autotuner's space carries the cap and its pruner keeps the capped entry."""
    use, _ = on_gpu
    use((8, 0), 163 * KIB)
    table = configs.candidates("dkv", 128, 64, "sm80", torch.float32)
    assert table[0] == (32, 16, 8, 2, 255) and len(table[1]) == 4
    kernel = Recorder(fail=1)
    configs.launch(kernel, None, "dkv", (1,), (), dict(D_PAD=128, N_PAD=64), None, 100, torch.device("cuda", 0),
                   torch.float32)
    assert kernel.calls[0]["maxnreg"] == 255 and "maxnreg" not in kernel.calls[1]
    from sisa_kernels.attention_bwd import _sisa_bwd_dkv_tuned as tuned
    assert any(c.maxnreg == 255 for c in tuned.configs) and any(c.maxnreg is None for c in tuned.configs)
    q = torch.empty(1, device="meta", dtype=torch.float32)
    kept = configs.launch_module._prune("dkv")(tuned.configs, {"Q": q, "D_PAD": 128, "N_PAD": 64})
    assert {(c.kwargs["BLOCK_OUT"], c.kwargs["BLOCK_IN"], c.num_warps, c.num_stages, c.maxnreg)
            for c in kept} == set(map(configs.full_entry, table))


def test_entries_per_width_class_and_head_dim_padding():
    """A kind's entries may be given per width class (decode on sm_80/sm_100/sm_120), the
    rest under "*"; the sm120 16-bit dk/dv class at n <= 16 pads a masked head dim only."""
    dec = configs.table("sm80", torch.float32)[1]["decode"]
    assert configs.others("decode", "sm80", torch.float32, (64, 128)) == dec[(64, 128)] != dec["*"]
    assert configs.others("decode", "sm80", torch.float32, (128, 16)) == dec["*"]
    assert configs.others("decode", "sm80", torch.float32) == dec["*"]
    pads = configs.pads_head_dim
    assert pads("dkv", 96, 128, 16, "sm120", torch.bfloat16) and pads("dkv", 80, 128, 16, "sm120", torch.float16)
    assert not pads("dkv", 128, 128, 16, "sm120", torch.bfloat16)        # nothing masked: nothing to pad
    assert not pads("dkv", 96, 128, 64, "sm120", torch.bfloat16)         # another class
    assert not pads("dkv", 96, 128, 16, "sm120", torch.float32)          # another dtype class
    assert not pads("dkv", 96, 128, 16, "sm86", torch.bfloat16) and not pads("dkv", 96, 128, 16, None, torch.bfloat16)
    assert not pads("dq", 96, 128, 16, "sm120", torch.bfloat16)


def test_a_scan_entry_with_a_cap_passes_it_on(on_gpu):
    """sm_80's float32 scan entries are (elements, maxnreg): the launch gets both, and a
    failed launch moves to the next entry with its own cap."""
    from sisa_kernels import scan
    use, _ = on_gpu
    use((8, 0), 163 * KIB)
    entries = configs.others("scan", "sm80", torch.float32)
    assert entries == [(1024, 255), (512, 255)]
    first_16bit = configs.others("scan", "sm80", torch.bfloat16)[0]
    calls = []

    def launch_one(elements, options):
        calls.append((elements, options))
        if len(calls) == 1:
            raise OutOfResources(300_000, 166_912, "shared memory")
    scan._launch("_scan_fwd_kernel", torch.device("cuda", 0), torch.float32, launch_one)
    assert calls == [(1024, {"maxnreg": 255}), (512, {"maxnreg": 255})]
    calls.clear()
    scan._launch("_scan_fwd_kernel", torch.device("cuda", 0), torch.bfloat16, lambda e, o: calls.append((e, o)))
    assert calls == [(first_16bit, {})]
