"""The one exception type iosim raises for bad input: a message that names the problem and the fix."""


class IosimError(ValueError):
    """Bad input (sizes, tiles, hardware profile, CLI arguments). The message says what is wrong and how to fix it."""
