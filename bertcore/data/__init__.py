"""Package data: ``calibration.txt``, the built-in calibration set of ``bertcore quantize``."""
