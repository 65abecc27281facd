"""Core ML `.mlpackage`: the converter (`converter`, registered as `coreml` on import), its toolchain check
(`toolchain`), inputs and outputs (`io`), post-conversion compression (`compress`) and the Linux-side validation
of a saved package (`validate`)."""
from converters.coreml import converter  # noqa: F401 (registers the format)
