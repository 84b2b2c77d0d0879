#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Command 1: the main job. Installs what is missing, builds the plugin, starts racs-lite in-process
# (or uses RACS_ADDR=host:port), records 10 s of audio through racssink, extracts seconds 2.5-7.5
# through racssrc into a WAV file, and checks that what came back is what went in.
#
#   scripts/quickstart.sh [--out FILE.wav]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
# The plugin library first, so that the gst-launch-1.0 lines the quickstart prints (with
# GST_PLUGIN_PATH=target/release) work when copied.
cargo build --release --lib
exec cargo run --release --example quickstart -- "$@"
