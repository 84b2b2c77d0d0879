#!/usr/bin/env bash
# Command 2: every check and every test of the workspace. This is what CI runs (.ci/run).
#
#   scripts/test.sh
#
# Steps: set-up (installs missing Debian packages), cargo fmt --check, clippy with warnings as
# errors, a debug build (target/debug/libgstracs.so, loaded by the gst-launch-1.0 and Python
# tests), then cargo test for the whole workspace. Stops at the first failing step.
set -euo pipefail

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
