#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Command 2: every check and every test of the workspace. This is what CI runs (.ci/run).
#
#   scripts/test.sh                     every suite on racs-lite (what CI runs)
#   scripts/test.sh --real /path/to/racs  every suite on a fresh real RACS server per test
#                                         (the same as setting RACS_BIN=/path/to/racs)
#
# Steps: set-up (installs missing Debian packages), cargo fmt --check, clippy with warnings as
# errors, a debug build (target/debug/libgstracs.so, loaded by the gst-launch-1.0 and Python
# tests), then cargo test for the whole workspace. Stops at the first failing step.
set -euo pipefail

if [[ "${1:-}" == "--real" ]]; then
  [[ -n "${2:-}" ]] || { echo "test: --real needs the path of a RACS server binary" >&2; exit 2; }
  RACS_BIN="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
  export RACS_BIN
  shift 2
fi
if [[ $# -gt 0 ]]; then
  echo "test: unknown argument '$1' (usage: scripts/test.sh [--real /path/to/racs])" >&2
  exit 2
fi
if [[ -n "${RACS_BIN:-}" ]]; then
  [[ -f "$RACS_BIN" && -x "$RACS_BIN" ]] ||
    { echo "test: RACS_BIN=$RACS_BIN is not an executable file" >&2; exit 2; }
  echo "test: every suite runs against a fresh real RACS server per test: $RACS_BIN" >&2
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
for tool in fmt clippy; do
  cargo "$tool" --version >/dev/null 2>&1 ||
    { echo "test: cargo $tool is missing; install it with: rustup component add ${tool/fmt/rustfmt}" >&2; exit 1; }
done

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --all -- --check"
cargo fmt --all -- --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --workspace"
cargo build --workspace
step "cargo test --workspace --no-fail-fast"
cargo test --workspace --no-fail-fast
