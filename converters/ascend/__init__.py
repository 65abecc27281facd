"""Ascend `.om` through ATC (CANN): the converter (`om`, registered as `om` on import), the typed `atc` command
(`atc`), the operator pre-check against ATC's parser table (`precheck`), the job script for a CANN host
(`script`), AIPP image preprocessing (`aipp`) and the AMCT calibration script shipped beside the model
(`amct_calibrate.py`, run on the CANN host, so it imports nothing of this project)."""
from converters.ascend import om  # noqa: F401 (registers the format)
