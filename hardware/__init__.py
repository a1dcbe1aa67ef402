"""Hardware profiles (one TOML per chip) installed as ``iosim.hardware``; load them with ``iosim.hwprofile``."""
