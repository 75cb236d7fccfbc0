"""The static sm_90 report, ``python -m benchmarks.static`` (head dims 64, 96, 128, 256;
d_states 16, 64, 128): every kernel config the launchers may pick compiles for Hopper
without a GPU, and the report has a row for each with sane numbers; ``test_budgets`` holds
the kernels to the sm_90 budgets (no spills, shared memory within 227 KiB, two forward
blocks per SM at d=64, n=16).

The command runs in a subprocess without TRITON_INTERPRET (conftest sets it for the suite;
the report must compile, not interpret), once for the module (about three minutes on two
cores). The expected attention configs come from ``sisa_kernels.configs`` (the launchers'
table and the autotuner's pruned list), independently of how the report finds them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DIMS, STATES = (64, 96, 128, 256), (16, 64, 128)
ATTENTION = {"_sisa_fwd_kernel": "fwd", "_sisa_bwd_dq_kernel": "dq", "_sisa_bwd_dkv_kernel": "dkv"}
OTHERS = {"_sisa_bwd_delta_kernel", "_scan_fwd_kernel", "_scan_bwd_kernel", "_decode_split_kernel",
          "_decode_merge_kernel", "_augment_fwd_kernel", "_augment_bwd_kernel"}
SMEM_BUDGET = 227 * 1024


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernel tests compile and run every kernel for it")
    pytest.importorskip("triton.backends.nvidia", reason="Triton built without the NVIDIA backend (no ptxas)")
    out = tmp_path_factory.mktemp("static")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SISA_AUTOTUNE")}
    res = subprocess.run([sys.executable, "-m", "benchmarks.static", "--out", str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-4000:]
    data = json.loads((out / "sm90_bf16.json").read_text())
    assert (out / "sm90_bf16.md").read_text().count("\n| _") == len(data["rows"])
    return data, res.stdout


def _config(row):
    """(block rows, block cols, num_warps, num_stages) of an attention row."""
    from sisa_kernels import configs
    rows, cols = configs.BLOCK_NAMES[ATTENTION[row["kernel"]]]
    return row["kwargs"][rows], row["kwargs"][cols], row["num_warps"], row["num_stages"]


def _project(rows):
    return [r for r in rows if r["family"] != "yardstick-fa2"]


def test_every_config_the_launchers_may_pick_has_a_sane_row(report):
    from sisa_kernels import configs
    from sisa_kernels.attention import padded, state_padded
    data, stdout = report
    rows = data["rows"]
    assert not [r["error"] for r in rows if r["error"]]
    table = [line.split()[0] for line in stdout.splitlines() if line.startswith("_")]
    assert sorted(table) == sorted(r["kernel"] for r in rows)           # the printed table: one line per row

    for kernel, kind in ATTENTION.items():
        for d in DIMS:
            for n in STATES:
                d_pad = padded(d)
                n_pad = state_padded(n, d_pad)
                pick = configs.pick(kind, d_pad, n_pad)
                expected = set(configs.candidates(kind, d_pad, n_pad)) | {tuple(pick.values())}
                found = [r for r in rows if r["kernel"] == kernel and d in r["head_dims"] and n in r["d_states"]]
                assert {_config(r) for r in found} == expected, (kernel, d, n)
                assert [_config(r) for r in found if r["pick"]] == [tuple(pick.values())], (kernel, d, n)
    for kernel in OTHERS:        # a row for every (d, n) (an empty list: the kernel does not take it)
        for d in DIMS:
            for n in STATES:
                assert [r for r in rows if r["kernel"] == kernel and r["pick"] and d in (r["head_dims"] or [d])
                        and n in (r["d_states"] or [n])], (kernel, d, n)
    yard = sorted((r["head_dims"][0], r["num_stages"], r["num_warps"], r["kwargs"]["BLOCK_M"], r["kwargs"]["BLOCK_N"])
                  for r in rows if r["family"] == "yardstick-fa2")
    assert yard == [(64, 2, 8, 128, 64), (64, 3, 8, 128, 64), (128, 2, 8, 128, 64), (128, 3, 8, 128, 64)]

    for r in rows:
        where = (r["kernel"], r["kwargs"], r["head_dims"], r["d_states"])
        assert 1 <= r["regs"] <= 255 and r["dtype"] == "bf16" and r["blocks_per_sm"] >= 1, where
        if r["kernel"] in ATTENTION or r["family"] == "yardstick-fa2":
            assert r["smem"] > 0, where
            # wgmma takes 64 rows per warpgroup: 32-row tiles use mma.sync (HMMA) instead.
            tile_rows = _config(r)[0] if r["kernel"] in ATTENTION else r["kwargs"]["BLOCK_M"]
            if tile_rows >= 64:
                assert r["wgmma"] > 0 and r["hgmma"] > 0, where
            else:
                assert r["hmma"] > 0, where


def test_budgets(report):
    """Every kernel of the project (the FlashAttention yardstick is a reference, not held to
    this): 0 spilled bytes and shared memory within 227 KiB; the forward at d=64, n=16
    keeps two blocks per SM with at least one config the launcher may pick."""
    rows = _project(report[0]["rows"])
    over = [(r["kernel"], r["kwargs"], r["head_dims"], r["d_states"], r["spilled_bytes"], r["smem"]) for r in rows
            if r["spilled_bytes"] != 0 or r["smem"] > SMEM_BUDGET]
    assert not over, f"{len(over)} rows over budget (kernel, config, d, n, spilled bytes, smem): {over}"
    fwd = [r for r in rows if r["kernel"] == "_sisa_fwd_kernel" and 64 in r["head_dims"] and 16 in r["d_states"]]
    assert max(r["blocks_per_sm"] for r in fwd) >= 2
