#!/usr/bin/env bash
# Runs every Busbar check: formatting, lints and all tests.
# Works on a fresh Debian machine with only rustup/cargo: it installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
