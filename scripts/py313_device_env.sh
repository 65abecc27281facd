#!/usr/bin/env bash
# A Python >= 3.12 device environment on this x86-64 host, without torch: numpy, executorch-numpy-runtime (`.pte`
# through ExecuTorch 1.3.1's runtime; it needs CPython >= 3.12, the project's venv is 3.11), ai-edge-litert and
# onnxruntime. The device side of this project (device_runtime) is not installed: the SSH transport ships it on
# each run, as to any device, and benchmark workers get it on PYTHONPATH. ENV/bin/python is its interpreter.
#
#   scripts/py313_device_env.sh [ENV_DIR]        (default .cache/py313-device; rebuilt only when missing)
#
# Where its Python comes from, first found:
#   1. a CPython 3.13 (or 3.12) on this machine: pyenv's, or python3.13 / python3.12 on PATH -> a venv;
#   2. else Debian 13 (trixie)'s python3.13 debs (apt-get download through a private apt state, see
#      scripts/debian_debs.sh; dpkg -x, no install) with trixie's own glibc, run through trixie's dynamic loader
#      (ENV/bin/python is a wrapper), and the cp313 x86-64 wheels unpacked into ENV/site.
# PY313_FROM=debian forces route 2. The finished environment is marked by ENV/READY (written last).
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${1:-.cache/py313-device}"
# The host venv's numpy and runtime versions.
WHEELS=(numpy==2.4.6 executorch-numpy-runtime==1.4.0 ai-edge-litert==2.3.0 onnxruntime==1.32.0)
if [ -f "$ENV/READY" ]; then echo "py313 device environment ready: $ENV"; exit 0; fi
start=$(date +%s)
rm -rf "$ENV"
PYTHON=
if [ "${PY313_FROM:-}" != debian ]; then
  for candidate in "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3.13 \
                   "$(command -v python3.13 || true)" "$(command -v python3.12 || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c "import venv, ensurepip" 2>/dev/null; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [ -n "$PYTHON" ]; then
  route="venv of $PYTHON"
  "$PYTHON" -m venv "$ENV"
  "$ENV/bin/pip" install -q --disable-pip-version-check "${WHEELS[@]}"
else
  route="Debian 13 debs"
  . scripts/debian_debs.sh
  arch="$(dpkg --print-architecture)"
  [ "$arch" = amd64 ] || { echo "the Debian route is written for amd64 hosts, this is $arch" >&2; exit 3; }
  tmp="$ENV.partial"
  rm -rf "$tmp" && mkdir -p "$tmp/root" "$tmp/debs" "$tmp/wheels"
  debian_download trixie "$tmp/debs" python3.13 python3.13-minimal libpython3.13-minimal libpython3.13-stdlib \
    libc6 libexpat1 zlib1g libffi8 libssl3t64 libzstd1 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 \
    libtinfo6 libreadline8t64 libgcc-s1 libstdc++6 libdb5.3t64 media-types
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --python-version 3.13 --implementation cp -d "$tmp/wheels" "${WHEELS[@]}"
  mkdir -p "$tmp/root/site"
  for whl in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$tmp/root/site" >/dev/null; done
  mkdir -p "$tmp/root/bin"
  # Trixie's python3.13 needs trixie's glibc (2.41; bookworm has 2.36): run it through trixie's own loader with
  # trixie's library folders. --argv0 makes sys.executable this wrapper, so a child started from sys.executable
  # comes back through it; PYTHONHOME says where the standard library is, since argv0 no longer does.
  cat > "$tmp/root/bin/python" <<'WRAP'
#!/bin/sh
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONHOME="$ROOT/usr" PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT/site"
exec "$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$ROOT/usr/lib/x86_64-linux-gnu" \
  --argv0 "$0" "$ROOT/usr/bin/python3.13" "$@"
WRAP
  chmod +x "$tmp/root/bin/python"
  rm -rf "$tmp/debs" "$tmp/wheels"
  mv "$tmp/root" "$ENV" && rmdir "$tmp"
fi
"$ENV/bin/python" - <<'PY'
import platform, sys
import numpy, executorch_numpy_runtime as en, ai_edge_litert, onnxruntime
try:
    import torch  # noqa: F401
    sys.exit("torch is importable in the device environment: it must stay torch-free")
except ImportError:
    pass
print("device python", platform.python_version(), platform.machine(), "numpy", numpy.__version__,
      "executorch-numpy-runtime", en.__version__, "(ExecuTorch", en.__et_version__ + ")", "onnxruntime", onnxruntime.__version__)
PY
printf 'built %s in %s s: %s\n' "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" "$route" > "$ENV/READY"
cat "$ENV/READY"
