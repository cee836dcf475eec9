#!/usr/bin/env bash
# Runs every Busbar check: formatting, lints and all tests, for the host and
# for the guest plugins. Works on a fresh Debian machine with only
# rustup/cargo: it installs what it needs (rustfmt, clippy, wasm32-wasip2).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add wasm32-wasip2

# The SDK vendors the plugin WIT (so it builds outside this repository, as
# `busbar plugin new` writes it); it must stay identical to the host's.
if ! diff -r wit plugins/sdk/wit; then
  echo "plugins/sdk/wit differs from wit/: copy wit/ to plugins/sdk/wit" >&2
  exit 1
fi

# Guest side: the plugins/ workspace (SDK, examples, hostile test plugins).
(
  cd plugins
  cargo fmt --all --check
  cargo build --target wasm32-wasip2 --release --locked
  cargo clippy --all-targets --locked -- -D warnings
  cargo test --locked
)

# Host side: builds the guests again for its own tests (tests/support/guests.rs).
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
