#!/bin/sh
# Installs the headless browser the end-to-end tests drive: Debian's chromium and
# chromium-driver. Does nothing, and prints nothing, when both are already there.
set -eu

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

echo "install-browser: installing chromium and chromium-driver" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install-browser: $(chromium --version 2>/dev/null || echo chromium installed)" >&2
