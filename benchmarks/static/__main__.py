"""``python -m benchmarks.static``: see the package docstring."""
import os
import sys

from .lifeline import die_with_parent

if __name__ == "__mp_main__":                 # a spawned compile worker: first of all, tie it to the report
    die_with_parent()
os.environ.pop("TRITON_INTERPRET", None)    # read when @triton.jit decorates: before any import of Triton

from .cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
