"""iosim: an analytical IO-complexity simulator and cost model for attention kernels.

Data flows one way: hardware profile + problem + kernel config → schedule (``iosim.models``) → counts
(``iosim.counts``) → [L2 simulation → cost] → report.
"""

from iosim.errors import IosimError, IosimWarning
from iosim.hwprofile import Hardware, load_hardware
from iosim.predict import predict  # eager: a lazy wrapper named like the submodule is replaced by it on import
from iosim.problem import KernelConfig, Problem
from iosim.sweep import sweep  # eager like predict; iosim.sweep imports pandas only when called

__all__ = ["IosimError", "IosimWarning", "Hardware", "KernelConfig", "Problem", "load_hardware", "predict", "sweep"]
__version__ = "0.1.0"

