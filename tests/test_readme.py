"""README.md's code runs as written: every ```python block, each in a fresh process
in an empty folder (so each must be self-contained), and the shell commands that
matter, cheaply (each command's module answers --help; lm-eval's command on one
example per task)."""
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)
# Indented shell commands (a line of four spaces, then the command; "\" continues it).
COMMANDS = [re.sub(r"\\\n\s*", "", m) for m in re.findall(r"^    ((?:[A-Z_]+=\S+ )*(?:python|pip|sisa-|lm_eval)"
                                                         r"(?:.*\\\n)*.*)$", README, flags=re.M)]
# What a block needs beyond the core package: (pattern in the code, module, extra).
OPTIONAL = [(r"sisa\.hf|transformers|lm_eval_smoke", "transformers", "hf"), (r"matplotlib", "matplotlib", "bench")]


def env(tmp_path: Path) -> dict:
    """PYTHONPATH: this checkout, and sisa_benchmarks (what an install names the
    benchmarks folder) as a link to it unless an install already provides it."""
    paths = [str(ROOT)]
    if importlib.util.find_spec("sisa_benchmarks") is None:
        shim = tmp_path / "_shim"
        shim.mkdir(exist_ok=True)
        if not (shim / "sisa_benchmarks").exists():
            (shim / "sisa_benchmarks").symlink_to(ROOT / "benchmarks")
        paths.insert(0, str(shim))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"}


def needs(code: str):
    """Skip (saying why) where the block needs an optional extra that is missing."""
    for pattern, module, extra in OPTIONAL:
        if re.search(pattern, code) and importlib.util.find_spec(module) is None:
            pytest.skip(f"README block needs {module} (the [{extra}] extra), which is not installed")


def run(args, cwd, tmp_path, timeout=600):
    res = subprocess.run(args, cwd=cwd, env=env(tmp_path), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{args[:3]}... failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def test_readme_has_blocks_and_commands():
    assert len(BLOCKS) >= 4, "the README's python blocks were not found"
    assert any("benchmarks.run --quick" in c for c in COMMANDS), COMMANDS
    assert any(c.startswith("HF_HUB_OFFLINE") and "lm_eval" in c for c in COMMANDS), COMMANDS


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_block_runs(index, tmp_path):
    code = BLOCKS[index]
    needs(code)
    work = tmp_path / "work"
    work.mkdir()
    launch = re.match(r"# torchrun --nproc-per-node (\d+) (\w+\.py)", code)
    if launch:                       # a script for torchrun: run it as its first line says
        (work / launch.group(2)).write_text(code)
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", launch.group(1),
             launch.group(2)], work, tmp_path)
    else:
        run([sys.executable, "-c", code], work, tmp_path)


def module_of(command: str) -> str | None:
    """The Python module a README command runs: python -m X, or a console script."""
    m = re.search(r"python3? -m ([\w.]+)", command)
    if m:
        return m.group(1)
    scripts = dict(re.findall(r'^(sisa-\w+) = "([\w.]+):main"', (ROOT / "pyproject.toml").read_text(), flags=re.M))
    m = re.match(r"(sisa-\w+)", command)
    if m:
        return scripts[m.group(1)].replace("sisa_benchmarks", "benchmarks")
    return None


def test_commands_modules_answer_help(tmp_path):
    modules = sorted({m for c in COMMANDS for part in c.split("&&") if (m := module_of(part.strip()))} - {"pytest"})
    assert {"benchmarks.run", "sisa.parity", "sisa.convert"} <= set(modules), modules
    for module in modules:
        if module in ("benchmarks.static",) and importlib.util.find_spec("triton") is None:
            continue                                               # its report needs Triton to import
        run([sys.executable, "-m", module, "--help"], ROOT, tmp_path)


def test_lm_eval_command(tmp_path):
    """The README's lm-eval block and command, in a folder outside the checkout, on one
    example of the task."""
    if importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("the lm-eval command needs the [eval] extra (lm-eval, transformers), not installed")
    save = next(b for b in BLOCKS if "save_tiny" in b)
    command = next(c for c in COMMANDS if "lm_eval --model" in c)
    work = tmp_path / "work"
    work.mkdir()
    run([sys.executable, "-c", save], work, tmp_path)
    lm_eval = Path(sys.executable).with_name("lm_eval")
    cmd = command.replace("lm_eval --model", f"{shlex.quote(str(lm_eval))} --model", 1)
    cmd = cmd.replace("$(python ", f"$({shlex.quote(sys.executable)} ") + " --limit 1"
    res = run(["bash", "-c", cmd], work, tmp_path)
    assert "sisa_needle" in res.stdout, res.stdout[-2000:]
