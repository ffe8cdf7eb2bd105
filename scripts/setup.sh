#!/bin/sh
# Installs what building and testing relais needs on a Debian machine that has only
# the Rust toolchain: a C compiler for the crypto crates, protoc for the etcd client,
# etcd for the cluster tests, Prometheus and Docker for the metrics and compose tests,
# Janus (which the benchmark and the load tests compare relais with), and the headless
# browser the end-to-end tests drive. Idempotent and quiet when everything is there.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

missing=""
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
command -v pkg-config >/dev/null 2>&1 || missing="$missing pkg-config"
# The etcd client crate compiles etcd's protobuf definitions at build time.
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing="$missing libprotobuf-dev"
# Cluster tests start a real etcd on loopback.
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
# The metrics tests run promtool and a real Prometheus; the compose test builds images
# from etcd, etcdctl, prometheus and promtool, and needs Docker with Compose.
command -v etcdctl >/dev/null 2>&1 || missing="$missing etcd-client"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v docker >/dev/null 2>&1 || missing="$missing docker.io"
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
    missing="$missing docker-compose"
fi
# The benchmark and a load test compare relais with a Janus VideoRoom.
command -v janus >/dev/null 2>&1 || missing="$missing janus"
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ "${1:-}" = "--with-browser" ]; then
    sh scripts/install-browser.sh
fi
