"""The core package must not import transformers (sisa.hf is the optional extra)."""
import subprocess
import sys


def test_import_sisa_does_not_import_transformers():
    code = ("import sys, sisa, sisa.convert, sisa.model, sisa.layer, sisa.cache\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'safetensors', 'lm_eval'))\n"
            "assert not bad, bad\n"
            "print('clean')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "clean" in res.stdout, res.stderr[-2000:]
