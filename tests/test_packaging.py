"""The package as installed: its file list, the optional extras' messages, where
sisa-bench writes, and the "sisa" logger for fallbacks. (A real `pip install .` in a
fresh venv was checked by hand: see the report of issue 22; building a wheel here
would need the network for the build backend.)"""
import logging
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import setuptools
import torch

import sisa

ROOT = Path(__file__).resolve().parents[1]
BLOCK = ("import sys\nclass _Block:\n    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] == {name!r}:\n            raise ImportError(f'{{name}} blocked')\n"
         "sys.meta_path.insert(0, _Block())\n")


def setup_kwargs() -> dict:
    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
    return captured


def test_install_claims_no_top_level_benchmarks():
    kw = setup_kwargs()
    tops = {p.split(".")[0] for p in kw["packages"]}
    assert tops == {"sisa", "sisa_kernels", "sisa_benchmarks"}, tops
    assert {"sisa", "sisa.hf", "sisa_kernels", "sisa_benchmarks"} <= set(kw["packages"])
    assert kw["package_dir"] == {"sisa_benchmarks": "benchmarks"}
    # every subpackage of benchmarks/ (e.g. a benchmarks/static/ package) is shipped too
    subpackages = {".".join(("sisa_benchmarks", *p.parent.relative_to(ROOT / "benchmarks").parts))
                   for p in (ROOT / "benchmarks").rglob("__init__.py")}
    assert subpackages <= set(kw["packages"]), subpackages


def test_metadata_is_pep621_with_one_version():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sisa.__version__"}
    assert sisa.__version__.count(".") == 2
    assert project["license"] == "MIT" and "Copyright (c) 2026 the sisa authors" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "sisa" / "py.typed").exists()
    assert not any(d.startswith("triton") for d in project["dependencies"]), "Triton is an extra, not a dependency"
    extras = project["optional-dependencies"]
    assert {"test", "bench", "hf", "eval", "flash", "triton"} <= set(extras)
    assert "peft" in extras["test"] and any(d.startswith("triton") for d in extras["test"])
    assert project["scripts"]["sisa-bench"] == "sisa_benchmarks.run:main"


def test_hf_without_transformers_names_the_extra():
    code = BLOCK.format(name="transformers") + "import sisa.hf\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode != 0 and "pip install 'sisa[hf]'" in res.stderr, res.stderr[-2000:]


def test_bench_without_matplotlib_says_install_the_extra_before_running(tmp_path):
    code = BLOCK.format(name="matplotlib") + "from benchmarks.run import main\nraise SystemExit(main(['--quick']))\n"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert res.returncode == 2 and "sisa[bench]" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "benchmarks").exists(), "it measured before saying so"


def test_bench_results_go_under_the_current_directory():
    from benchmarks import run
    assert not run.RESULTS.is_absolute() and run.RESULTS.parts == ("benchmarks", "results")


def test_auto_fallback_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(sisa.backends, "_NOTED", set())
    with caplog.at_level(logging.WARNING, logger="sisa"):
        for _ in range(2):
            assert sisa.backends.resolve("auto", torch.device("cuda"), "attention") in ("sdpa", "triton")
    if torch.cuda.is_available() and sisa.backends.triton_unavailable_reason("cuda") is None:
        pytest.skip("Triton runs on this CUDA device: no fallback to log")
    records = [r for r in caplog.records if r.name == "sisa"]
    assert len(records) == 1 and "Triton kernels cannot run" in records[0].getMessage(), records
