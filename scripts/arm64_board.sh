#!/usr/bin/env bash
# Build the emulated arm64 Linux board that tests and `pocketformer verify` use (DESIGN §4, measured recipe):
# Debian's arm64 Python 3.11 and its libraries unpacked into ROOT (no chroot, no root services), PyPI's aarch64
# wheels of numpy, ai-edge-litert and onnxruntime unpacked into ROOT/site, an ARM /proc/cpuinfo and
# /sys/devices/system/cpu files inside ROOT (qemu's -L prefix is searched first for absolute paths, so XNNPACK's
# cpuinfo reads these instead of the x86 host's and does not crash), and ROOT/bin/python, a wrapper that runs
# the board's Python under qemu-aarch64-static as a Cortex-A72.
#
#   scripts/arm64_board.sh [BOARD_DIR]        (default .cache/arm64-board; rebuilt only when missing)
#
# Needs: root (apt-get), qemu-user-static, network. The finished board is marked by BOARD_DIR/READY; tests
# never download anything: they skip, saying why, when READY is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD="${1:-.cache/arm64-board}"
# The host venv's versions, so the board runs the same runtime releases with ARM kernels.
WHEELS=(numpy==2.4.6 ai-edge-litert==2.3.0 onnxruntime==1.32.0)
DEBS=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8
      libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libgcc-s1 libstdc++6
      libcrypt1 libgdbm6 libnsl2 libtirpc3 libdb5.3)
if [ -f "$BOARD/READY" ]; then echo "arm64 board ready: $BOARD"; exit 0; fi
command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static missing (apt-get install qemu-user-static)" >&2; exit 3; }
start=$(date +%s)
tmp="$BOARD.partial"
rm -rf "$tmp" && mkdir -p "$tmp/root" "$tmp/debs" "$tmp/wheels"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
apt-get update -qq
# media-types is Architecture: all (no :arm64 variant): the mime table Python's mimetypes reads.
(cd "$tmp/debs" && apt-get download -qq "${DEBS[@]/%/:arm64}" media-types)
for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
PIP="${PIP:-python3 -m pip}"
$PIP download -q --only-binary=:all: --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --python-version 3.11 --implementation cp \
  -d "$tmp/wheels" "${WHEELS[@]}"
mkdir -p "$tmp/root/site"
for whl in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$tmp/root/site" >/dev/null; done
# An ARM CPU for XNNPACK's cpuinfo: Cortex-A72 (implementer 0x41, part 0xd08), two cores. The "model name" line
# is how the board says it is emulated: device_runtime reports it as the CPU (bench and verify documents), and
# reports label such timings "emulation" (device_runtime.bundle.emulation), never device timings.
mkdir -p "$tmp/root/proc" "$tmp/root/sys/devices/system/cpu"
for cpu in 0 1; do
  printf 'processor\t: %s\nmodel name\t: Cortex-A72 (emulated: qemu-aarch64-static)\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$cpu"
done > "$tmp/root/proc/cpuinfo"
for f in possible present online; do echo 0-1 > "$tmp/root/sys/devices/system/cpu/$f"; done
for cpu in 0 1; do mkdir -p "$tmp/root/sys/devices/system/cpu/cpu$cpu"; done
mkdir -p "$tmp/root/bin"
# The board's python: PYTHONPATH from the caller (the transport ships device_runtime.zip) goes in front of the
# board's own site folder; qemu gets it through -E since the emulated process does not inherit our environment.
cat > "$tmp/root/bin/python" <<'WRAP'
#!/bin/sh
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec qemu-aarch64-static -cpu cortex-a72 -L "$ROOT" -E PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT/site" \
  -E PYTHONDONTWRITEBYTECODE=1 -E HOME="${HOME:-/tmp}" "$ROOT/usr/bin/python3.11" "$@"
WRAP
chmod +x "$tmp/root/bin/python"
"$tmp/root/bin/python" -c "import numpy, platform; print('board python', platform.machine(), 'numpy', numpy.__version__)"
rm -rf "$tmp/debs" "$tmp/wheels"
mv "$tmp/root" "$tmp/board" && rm -rf "$BOARD" && mv "$tmp/board" "$BOARD" && rmdir "$tmp"
printf 'built %s in %s s\n' "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" > "$BOARD/READY"
cat "$BOARD/READY"
