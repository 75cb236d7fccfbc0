"""The error a launcher raises when no config of its table launches on this device,
and the one warning per (kernel, device, width class) the caller emits when it runs
the exact path instead. Nothing here imports Triton."""
from __future__ import annotations

import logging
import warnings

REPORT_HINT = ("please report it at the project's issue tracker with this message, "
               "`nvidia-smi`, and the torch and Triton versions")

_WARNED: set = set()


class KernelLaunchError(RuntimeError):
    """Every config of a kernel's table failed to compile or launch on this device.

    kernel: the Triton kernel's name; device: the GPU's name; family: the tile table;
    width: the width class (e.g. (head dim, d_state) padded, or None); configs: the
    configs tried, in order; cause: the last failure."""

    def __init__(self, kernel: str, device: str, family: str | None, width, configs: list, cause: BaseException):
        self.kernel, self.device, self.family, self.width, self.configs = kernel, device, family, width, configs
        self.__cause__ = cause
        super().__init__(f"{kernel}: no config of the {family} table launches on {device} (width class {width}; "
                         f"tried {configs}); last error {type(cause).__name__}: {str(cause).strip()[:300]}")

    def warn_once(self, instead: str) -> None:
        """Warn (warnings.warn and the ``sisa`` logger) once per (kernel, device, width
        class) that ``instead`` runs in place of the fused kernel."""
        key = (self.kernel, self.device, self.width)
        if key in _WARNED:
            return
        _WARNED.add(key)
        msg = (f"sisa: the fused kernel {self.kernel} cannot launch on {self.device} (tile table {self.family}, "
               f"width class {self.width}, configs tried {self.configs}; last error "
               f"{type(self.__cause__).__name__}: {str(self.__cause__).strip()[:200]}); running {instead} "
               f"instead (exact, slower). This is a bug in sisa's tile tables: {REPORT_HINT}.")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        logging.getLogger("sisa").warning(msg)
