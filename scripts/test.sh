#!/bin/sh
# Installs what is missing, builds once, then runs every test suite of relais.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh --with-browser

export CARGO_TERM_COLOR=never
cargo build --all-targets
cargo test --all-targets
