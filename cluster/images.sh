#!/bin/sh
# Builds the images docker-compose.yml can run, without pulling anything from a registry:
# each one is FROM scratch with binaries of this machine and the shared libraries they
# link. relais is the binary given (default target/release/relais, else target/debug);
# etcd, etcdctl, prometheus and promtool come from Debian's etcd-server, etcd-client and
# prometheus packages (scripts/setup.sh installs them).
#
#   cluster/images.sh [path/to/relais]
#
# Tags, overridable like in docker-compose.yml: RELAIS_IMAGE (relais:local),
# ETCD_IMAGE (relais-etcd:local), PROMETHEUS_IMAGE (relais-prometheus:local).
set -eu
cd "$(dirname "$0")/.."

relais=${1:-}
if [ -z "$relais" ]; then
    relais=target/release/relais
    [ -x "$relais" ] || relais=target/debug/relais
fi
[ -x "$relais" ] || { echo "images: no relais binary at $relais; run cargo build" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies a binary to DIR/DEST with every library ldd lists, at the same paths.
add() {
    dir=$1 src=$2 dest=$3
    mkdir -p "$dir$(dirname "$dest")"
    cp -L "$src" "$dir$dest"
    ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
        while read -r lib; do
            mkdir -p "$dir$(dirname "$lib")"
            cp -L "$lib" "$dir$lib"
        done
}

# Builds tag $1 from rootfs $2 with the Dockerfile lines on stdin after FROM scratch.
image() {
    tag=$1 dir=$2
    { echo "FROM scratch"; echo "COPY rootfs/ /"; cat; } > "$dir/../Dockerfile"
    # The log is shown only on failure: the legacy builder warns about itself each time.
    if ! docker build -q -t "$tag" "$dir/.." >"$dir/../build.log" 2>&1; then
        cat "$dir/../build.log" >&2
        exit 1
    fi
    echo "images: built $tag"
}

mkdir -p "$work/relais/rootfs"
add "$work/relais/rootfs" "$relais" /usr/local/bin/relais
image "${RELAIS_IMAGE:-relais:local}" "$work/relais/rootfs" <<'DOCKERFILE'
ENV PATH=/usr/local/bin
EXPOSE 7880 9464
ENTRYPOINT ["/usr/local/bin/relais"]
CMD ["serve"]
DOCKERFILE

mkdir -p "$work/etcd/rootfs/var/lib/etcd"
add "$work/etcd/rootfs" /usr/bin/etcd /usr/local/bin/etcd
add "$work/etcd/rootfs" /usr/bin/etcdctl /usr/local/bin/etcdctl
image "${ETCD_IMAGE:-relais-etcd:local}" "$work/etcd/rootfs" <<'DOCKERFILE'
ENV PATH=/usr/local/bin
EXPOSE 2379 2380
CMD ["etcd"]
DOCKERFILE

mkdir -p "$work/prometheus/rootfs/prometheus" "$work/prometheus/rootfs/etc/prometheus"
add "$work/prometheus/rootfs" /usr/bin/prometheus /bin/prometheus
add "$work/prometheus/rootfs" /usr/bin/promtool /bin/promtool
image "${PROMETHEUS_IMAGE:-relais-prometheus:local}" "$work/prometheus/rootfs" <<'DOCKERFILE'
ENV PATH=/bin
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
