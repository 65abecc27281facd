#!/usr/bin/env bash
# Build an emulated arm64 Linux board that tests and `pocketformer verify` use (DESIGN §4, measured recipe):
# Debian's arm64 Python and its libraries unpacked into a root folder (no chroot, no root services), PyPI's
# aarch64 wheels unpacked into ROOT/site, an ARM /proc/cpuinfo and /sys/devices/system/cpu files inside the board
# (qemu's -L prefix is searched first for absolute paths, so XNNPACK's cpuinfo reads these instead of the x86
# host's and does not crash), and BOARD/bin/python, a wrapper that runs the board's Python under
# qemu-aarch64-static as the chosen CPU class.
#
#   scripts/arm64_board.sh [--debian bookworm|trixie] [--cpu CLASS] [BOARD_DIR]      (rebuilt only when missing)
#
#   --debian bookworm  Debian 12, Python 3.11: numpy, ai-edge-litert, onnxruntime (the default)
#   --debian trixie    Debian 13, Python 3.13: the same, plus executorch-numpy-runtime (`.pte` without torch)
#   --cpu cortex-a72   no dot product, no fp16 arithmetic (the default)
#   --cpu cortex-a76   dot product (asimddp) and fp16 arithmetic (fphp, asimdhp): the phones of the last years
#   --cpu neoverse-n1  the same features, ARM's server/board core
#   BOARD_DIR          default .cache/arm64-board for bookworm + cortex-a72 (today's board: everything inside it),
#                      else .cache/arm64-board-SUITE-CLASS: its own CPU files and wrapper, the rest linked from one
#                      root per suite (.cache/arm64-root-SUITE), so a second CPU class costs no second download
#
# One CPU class, three places that agree: qemu's -cpu (which sets the HWCAP bits XNNPACK picks kernels from), the
# Features line of the fake /proc/cpuinfo (written from the HWCAP bits qemu reports for that class, read by the
# board's own Python at build time), and its CPU part / "model name" ("... (emulated: qemu-aarch64-static)").
#
# Needs: root (apt-get), qemu-user-static, network. A finished board is marked by BOARD_DIR/READY; tests never
# download anything: they skip, saying why, when READY is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/debian_debs.sh
SUITE=bookworm CPU=cortex-a72 BOARD=
while [ $# -gt 0 ]; do
  case "$1" in
    --debian) SUITE="$2"; shift 2 ;;
    --cpu) CPU="$2"; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) BOARD="$1"; shift ;;
  esac
done
# MIDR fields of each class (implementer 0x41, ARM): the part numbers are ARM's; variant/revision of a common
# silicon (A72 r0p3 as today's board; A76 r4p1 as in the Raspberry Pi 5; N1 r3p1 as in AWS Graviton2).
case "$CPU" in
  cortex-a72) NAME=Cortex-A72 PART=0xd08 VARIANT=0x0 REVISION=3 ;;
  cortex-a76) NAME=Cortex-A76 PART=0xd0b VARIANT=0x4 REVISION=1 ;;
  neoverse-n1) NAME=Neoverse-N1 PART=0xd0c VARIANT=0x3 REVISION=1 ;;
  *) echo "unknown CPU class $CPU: cortex-a72, cortex-a76 or neoverse-n1" >&2; exit 2 ;;
esac
# The host venv's versions, so the board runs the same runtime releases with ARM kernels.
WHEELS=(numpy==2.4.6 ai-edge-litert==2.3.0 onnxruntime==1.32.0)
case "$SUITE" in
  bookworm)
    PY=3.11
    DEBS=(python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8
          libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libgcc-s1
          libstdc++6 libcrypt1 libgdbm6 libnsl2 libtirpc3 libdb5.3) ;;
  trixie)
    PY=3.13
    # Debian 13's names: the 64-bit time_t transition renamed several libraries (t64); 3.13 dropped crypt/nis.
    DEBS=(python3.13 python3.13-minimal libpython3.13-minimal libpython3.13-stdlib libc6 libexpat1 zlib1g libffi8
          libssl3t64 libzstd1 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8t64
          libgcc-s1 libstdc++6 libdb5.3t64)
    # ExecuTorch 1.3.1's runtime with XNNPACK, numpy only (CPython >= 3.12; abi3 aarch64 wheel).
    WHEELS+=(executorch-numpy-runtime==1.4.0) ;;
  *) echo "unknown Debian suite $SUITE: bookworm or trixie" >&2; exit 2 ;;
esac
if [ -z "$BOARD" ]; then
  if [ "$SUITE-$CPU" = bookworm-cortex-a72 ]; then BOARD=.cache/arm64-board; else BOARD=".cache/arm64-board-$SUITE-$CPU"; fi
fi
if [ -f "$BOARD/READY" ]; then echo "arm64 board ready: $BOARD"; exit 0; fi
command -v qemu-aarch64-static >/dev/null || { echo "qemu-aarch64-static missing (apt-get install qemu-user-static)" >&2; exit 3; }
start=$(date +%s)

# build_root DIR: the suite's arm64 Python, its libraries and the aarch64 wheels, unpacked into DIR.
build_root() {
  local dir="$1" tmp="$1.partial"
  rm -rf "$tmp" && mkdir -p "$tmp/root" "$tmp/debs" "$tmp/wheels"
  if [ "$SUITE" = bookworm ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64  # the host's own apt serves bookworm's arm64 debs
  fi
  # media-types is Architecture: all (no :arm64 variant): the mime table Python's mimetypes reads.
  debian_download "$SUITE" "$tmp/debs" "${DEBS[@]/%/:arm64}" media-types
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
  # Debian 13 is merged-/usr and its libc6 ships only usr/lib/ld-linux-aarch64.so.1: the /lib link that
  # base-files makes on a real system is what the ELF interpreter path (/lib/ld-linux-aarch64.so.1) needs.
  [ -e "$tmp/root/lib" ] || ln -s usr/lib "$tmp/root/lib"
  PIP="${PIP:-python3 -m pip}"
  $PIP download -q --only-binary=:all: --platform manylinux_2_27_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --python-version "$PY" --implementation cp \
    -d "$tmp/wheels" "${WHEELS[@]}"
  mkdir -p "$tmp/root/site"
  for whl in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$tmp/root/site" >/dev/null; done
  rm -rf "$dir" && mv "$tmp/root" "$dir" && rm -rf "$tmp"
}

if [ "$SUITE-$CPU" = bookworm-cortex-a72 ]; then
  # Today's board: a root of its own, as before.
  build_root "$BOARD.root"
  board_tmp="$BOARD.root"
else
  SHARED=".cache/arm64-root-$SUITE"
  if [ ! -f "$SHARED/READY" ]; then
    build_root "$SHARED"
    date -u +%FT%TZ > "$SHARED/READY"
  fi
  board_tmp="$BOARD.partial"
  rm -rf "$board_tmp" && mkdir -p "$board_tmp"
  # Everything but the CPU files and the wrapper is the suite's root (qemu follows the links under -L).
  for entry in "$SHARED"/*; do
    case "$(basename "$entry")" in
      proc|sys|bin|READY) ;;
      *) ln -s "$(realpath --relative-to="$board_tmp" "$entry")" "$board_tmp/$(basename "$entry")" ;;  # relative: the cache may move
    esac
  done
fi
QEMU_ROOT="$(cd "$board_tmp" && pwd)"
# The HWCAP bits qemu gives this CPU class, named as Linux names them in /proc/cpuinfo (bit order:
# arch/arm64/kernel/cpuinfo.c). Read by the board's own Python before any fake cpuinfo exists (it reads none).
HWCAP_NAMES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
HWCAP2_NAMES="dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm
bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 smef32f32 smefa64"
caps=$(qemu-aarch64-static -cpu "$CPU" -L "$QEMU_ROOT" "$QEMU_ROOT/usr/bin/python$PY" -S -c \
  "import ctypes; g = ctypes.CDLL(None).getauxval; g.restype = ctypes.c_ulong; g.argtypes = [ctypes.c_ulong]; print(g(16), g(26))")
FEATURES=$(python3 - "$caps" "$HWCAP_NAMES" "$HWCAP2_NAMES" <<'PY'
import sys
hwcap, hwcap2 = (int(v) for v in sys.argv[1].split())
names = [n for i, n in enumerate(sys.argv[2].split()) if hwcap >> i & 1]
names += [n for i, n in enumerate(sys.argv[3].split()) if hwcap2 >> i & 1]
print(" ".join(names))
PY
)
# Two cores, one block each. The "model name" line is how the board says it is emulated: device_runtime reports
# it as the CPU (bench and verify documents), and reports label such timings "emulation", never device timings.
mkdir -p "$board_tmp/proc" "$board_tmp/sys/devices/system/cpu" "$board_tmp/bin"
for cpu in 0 1; do
  printf 'processor\t: %s\nmodel name\t: %s (emulated: qemu-aarch64-static -cpu %s)\nBogoMIPS\t: 100.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
    "$cpu" "$NAME" "$CPU" "$FEATURES" "$VARIANT" "$PART" "$REVISION"
done > "$board_tmp/proc/cpuinfo"
for f in possible present online; do echo 0-1 > "$board_tmp/sys/devices/system/cpu/$f"; done
for cpu in 0 1; do mkdir -p "$board_tmp/sys/devices/system/cpu/cpu$cpu"; done
# The board's python: PYTHONPATH from the caller (the transport ships device_runtime.zip) goes in front of the
# board's own site folder; qemu gets it through -E since the emulated process does not inherit our environment.
cat > "$board_tmp/bin/python" <<WRAP
#!/bin/sh
ROOT="\$(cd "\$(dirname "\$0")/.." && pwd)"
exec qemu-aarch64-static -cpu $CPU -L "\$ROOT" -E PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}\$ROOT/site" \\
  -E PYTHONDONTWRITEBYTECODE=1 -E HOME="\${HOME:-/tmp}" "\$ROOT/usr/bin/python$PY" "\$@"
WRAP
chmod +x "$board_tmp/bin/python"
"$board_tmp/bin/python" -c "import numpy, platform; print('board python', platform.python_version(), platform.machine(), 'numpy', numpy.__version__)"
rm -rf "$BOARD" && mv "$board_tmp" "$BOARD"
printf 'built %s in %s s: Debian %s, Python %s, %s (qemu -cpu %s), Features: %s\n' "$(date -u +%FT%TZ)" \
  "$(( $(date +%s) - start ))" "$SUITE" "$PY" "$NAME" "$CPU" "$FEATURES" > "$BOARD/READY"
cat "$BOARD/READY"
