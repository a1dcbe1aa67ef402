"""iosim: an analytical IO-complexity simulator and cost model for attention kernels.

Data flows one way: hardware profile + problem + kernel config → schedule (``iosim.models``) → counts
(``iosim.counts``) → [L2 simulation → cost] → report. ``iosim.predict`` (``iosim.pipeline``) runs it for one point,
``iosim.sweep`` (``iosim.sweeps``) for a grid.

``import iosim`` stays light (no sympy, pandas or matplotlib): the pipeline and the sweep load on first use. Their
modules are named ``pipeline`` and ``sweeps``, not ``predict`` and ``sweep``, so that importing a submodule never
replaces the function of the same name on the package.
"""

from iosim.errors import IosimError, IosimWarning

__all__ = ["IosimError", "IosimWarning", "Hardware", "KernelConfig", "Problem", "load_hardware", "predict", "sweep"]
__version__ = "0.1.0"

_LAZY = {"predict": "iosim.pipeline", "Prediction": "iosim.pipeline", "sweep": "iosim.sweeps",
         "Hardware": "iosim.hwprofile", "load_hardware": "iosim.hwprofile",
         "KernelConfig": "iosim.problem", "Problem": "iosim.problem"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'iosim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
