#!/usr/bin/env bash
# Sourced by the device-environment scripts: `debian_download SUITE DEST PKG...` downloads Debian packages (names
# may carry :arm64) into DEST, without installing anything.
#
# bookworm is this host's own release: its apt, as configured. Any other suite (trixie: Debian 13, Python 3.13)
# gets an apt state of its own under .cache/apt-SUITE (its sources file, package lists, cache and an empty
# status file), passed to apt-get with -o options: the host's sources, lists and installed packages are never
# touched, so its bookworm apt keeps working exactly as before. The suite's packages are signed by keys that
# bookworm's debian-archive-keyring already ships (13/trixie included).
debian_download() {
  local suite="$1" dest="$2"
  shift 2
  if [ "$suite" = bookworm ]; then
    apt-get update -qq
    (cd "$dest" && apt-get download -qq "$@")
    return
  fi
  local state
  state="$(pwd)/.cache/apt-$suite"
  mkdir -p "$state/sources.list.d" "$state/lists/partial" "$state/cache/archives/partial"
  : > "$state/status"
  cat > "$state/sources.list.d/$suite.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  local opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$state/sources.list.d"
              -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Dir::State::status=$state/status"
              -o "APT::Architectures::=$(dpkg --print-architecture)" -o APT::Architectures::=arm64
              -o APT::Sandbox::User=root)  # root downloads into the work tree, which _apt may not write
  apt-get "${opts[@]}" update -qq
  (cd "$dest" && apt-get "${opts[@]}" download -qq "$@")
}
