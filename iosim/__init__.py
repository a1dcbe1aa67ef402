"""iosim: an analytical IO-complexity simulator and cost model for attention kernels.

Data flows one way: hardware profile + problem + kernel config → schedule (``iosim.models``) → counts
(``iosim.counts``) → [L2 simulation → cost] → report.
"""

from iosim.errors import IosimError
from iosim.hwprofile import Hardware, load_hardware
from iosim.problem import KernelConfig, Problem

__all__ = ["IosimError", "Hardware", "KernelConfig", "Problem", "load_hardware", "predict"]
__version__ = "0.1.0"


def predict(*args, **kwargs):
    """See iosim.predict.predict."""
    from iosim.predict import predict as _predict
    return _predict(*args, **kwargs)
