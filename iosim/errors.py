"""The exception iosim raises for bad input (a message that names the problem and the fix), and the warning it gives
for input it models anyway but that could not run as given (more memory than the GPU has, a grid over CUDA's limits)."""


class IosimError(ValueError):
    """Bad input (sizes, tiles, hardware profile, CLI arguments). The message says what is wrong and how to fix it."""


class IosimWarning(UserWarning):
    """A prediction made anyway for a problem the real kernel could not run as given; the message says why."""
