#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Installs what building, running and testing gst-plugin-racs needs on Debian bookworm (12) and
# checks the Rust toolchain. Idempotent: when everything is present it prints one line and touches
# nothing. Uses sudo only when not root. Safe to run without a terminal (CI).
#
#   scripts/setup.sh            check, install what is missing
#   scripts/setup.sh --check    check only; exit 1 listing what is missing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

check_only=0
if [[ "${1:-}" == "--check" ]]; then check_only=1; fi

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Debian packages, and why each is needed.
packages=(
  build-essential                     # cc and the linker for Rust and the -sys crates
  pkg-config                          # finds GStreamer for the gstreamer-sys crates
  ca-certificates                     # cargo fetching crates over https
  git                                 # build.rs reads the commit id
  libgstreamer1.0-dev                 # gstreamer-1.0.pc and headers
  libgstreamer-plugins-base1.0-dev    # gstreamer-base/-audio .pc files
  gstreamer1.0-tools                  # gst-launch-1.0, gst-inspect-1.0 (tests/launch.rs, README)
  gstreamer1.0-plugins-base           # audiotestsrc, audioconvert, decodebin, playbin, opusenc, oggmux, vorbisenc
  gstreamer1.0-plugins-good           # wavenc, wavparse, flacenc, lamemp3enc (MP3 export), jackaudiosrc/-sink, pulsesrc
  gstreamer1.0-plugins-bad            # hlssink2, voaacenc, mpegtsmux (HLS export)
  jackd2                              # a JACK server (dummy backend) for the JACK recipes (tests/jack.rs)
  python3                             # Debian's interpreter: the one python3-gi is built for
  python3-gi                          # PyGObject (tests/python.rs)
  gir1.2-gstreamer-1.0                # Gst typelib for PyGObject
  gir1.2-gst-plugins-base-1.0         # GstAudio/GstApp typelibs for PyGObject
)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    if ((check_only)); then
      die "missing Debian packages: ${missing[*]} (run scripts/setup.sh to install them)"
    fi
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
      command -v sudo >/dev/null 2>&1 ||
        die "not root and no sudo: install as root: apt-get install ${missing[*]}"
      sudo=(sudo)
    fi
    say "installing ${#missing[@]} Debian package(s): ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    # apt's output is shown only when it fails.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null >"$log" 2>&1 ||
      { cat "$log" >&2; die "apt-get update failed"; }
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Use-Pty=0 "${missing[@]}" </dev/null >"$log" 2>&1 ||
      { cat "$log" >&2; die "apt-get install ${missing[*]} failed"; }
    for p in "${missing[@]}"; do
      installed "$p" || die "package $p is still not installed after apt-get install"
    done
  fi
else
  # Not Debian: we cannot install, only check that the essentials are there.
  say "no dpkg-query (not Debian?): not installing packages, only checking for GStreamer"
  command -v pkg-config >/dev/null 2>&1 || die "pkg-config is missing"
  pkg-config --atleast-version=1.22 gstreamer-1.0 gstreamer-base-1.0 gstreamer-audio-1.0 ||
    die "GStreamer >= 1.22 development files are missing (gstreamer-1.0, -base-1.0, -audio-1.0)"
  command -v gst-launch-1.0 >/dev/null 2>&1 || die "gst-launch-1.0 is missing (GStreamer tools)"
fi

# GStreamer itself must be new enough for the v1_22 feature of the gstreamer crates.
pkg-config --atleast-version=1.22 gstreamer-1.0 ||
  die "GStreamer $(pkg-config --modversion gstreamer-1.0 2>/dev/null || echo '?') is too old: 1.22 or newer is needed (Debian bookworm or newer)"

# Rust: cargo must be on PATH (or in ~/.cargo/bin) and at least the crate's rust-version.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
need_rust="$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$root/Cargo.toml" | head -n1)"
need_rust="${need_rust:-1.92}"
rustup_hint="install Rust $need_rust or newer with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y, then open a new shell (or: . \"\$HOME/.cargo/env\")"
command -v cargo >/dev/null 2>&1 || die "cargo not found; $rustup_hint"
have_rust="$(cargo --version | awk '{print $2}')"
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }
version_ge "${have_rust%%-*}" "$need_rust" ||
  die "cargo $have_rust is too old, the crate needs $need_rust; run: rustup update stable (or $rustup_hint)"

say "ok: ${#packages[@]} Debian packages present, GStreamer $(pkg-config --modversion gstreamer-1.0), cargo $have_rust"
