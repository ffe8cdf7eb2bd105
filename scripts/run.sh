#!/bin/sh
# Installs what is missing, then runs one relais node with the embedded placement
# and the example configuration (dev mode: open http://localhost:7880/).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
exec cargo run --release --bin relais -- serve --config "${RELAIS_CONFIG:-config/relais.toml}"
