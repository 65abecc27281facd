#!/usr/bin/env bash
# A second device environment on this host: the design card's `tflite-runtime` (2.14, the last wheel; it needs
# numpy 1.x, so it cannot live in the project's venv). A venv of its own holding numpy<2 and tflite-runtime and
# nothing else: the device side of this project (device_runtime) is shipped to it by the SSH transport on each run,
# as to any device. Tests reach it through the sshd of tests/conftest.py (--remote-python ENV/bin/python).
#
#   scripts/tflite_runtime_env.sh [ENV_DIR]        (default .cache/tflite-runtime-env; rebuilt only when missing)
#
# On the arm64 board it is LiteRT instead: aarch64 wheels of tflite-runtime exist only up to CPython 3.10.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${1:-.cache/tflite-runtime-env}"
if [ -f "$ENV/READY" ]; then echo "tflite-runtime environment ready: $ENV"; exit 0; fi
start=$(date +%s)
# A venv records its own path, so it is built in place; READY (written last) marks it complete.
rm -rf "$ENV"
python3 -m venv "$ENV"
"$ENV/bin/pip" install -q "numpy<2" "tflite-runtime==2.14.0"
"$ENV/bin/python" -c "import numpy, tflite_runtime; print('numpy', numpy.__version__, 'tflite-runtime', tflite_runtime.__version__)"
printf 'built %s in %s s\n' "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" > "$ENV/READY"
cat "$ENV/READY"
