#!/usr/bin/env bash
# make images: the OCI images Breakwater ships, built without a container engine.
#
#   images/build.sh BIN_DIR OUT_DIR               the OCI archives
#   images/build.sh --stage-only BIN_DIR OUT_DIR  only each image's root filesystem, OUT_DIR/<name>/
#
# BIN_DIR holds the static (musl) binaries; OUT_DIR receives one OCI archive per image
# (`<name>.oci.tar`, the layout skopeo's `oci-archive:` transport reads, tagged with the version)
# and `<name>.digest` (the manifest digest). The tool is umoci (Debian's package): it writes OCI
# image layouts directly, with no daemon and no root-filesystem mounts. The Dockerfile's build
# stage runs `--stage-only`, so both ways put the same files in the images; its image stages
# repeat the configuration below (user, entrypoint, environment, labels), and
# e2e/tests/images.rs checks that both give the same files and the same configuration.
#
# Reproducible: every file gets the same owner (0:0), mode and mtime (the commit's time), the
# config's creation time is that commit's time too, and the archive is written with sorted
# names and fixed metadata — so one commit (and one Debian iptables package) gives one digest.
#
# Images (each FROM scratch, no shell, no package manager):
#   sidecar       /usr/local/bin/breakwater-sidecar, user 2102 (the chart's proxyUid). Its `init`
#                 subcommand drives iptables-restore/iptables-save, so the image also carries
#                 Debian's iptables (nft backend) with exactly the libraries it loads.
#   operator      /usr/local/bin/breakwater-operator, user 65532 (the chart's securityContext).
#   fault-server  /usr/local/bin/breakwater-fault, user 65532 (the e2e and demo upstream).
#   e2e-client    /usr/local/bin/breakwater-e2e-client, user 65532 (the e2e caller).
# No CA certificates: no binary verifies a public TLS peer (the operator trusts the cluster CA
# from its service account, the proxy the operator's CA from its Secret; OTLP export is plain).
set -euo pipefail

STAGE_ONLY=false
if [ "${1:-}" = --stage-only ]; then STAGE_ONLY=true; shift; fi
BIN_DIR=${1:?usage: images/build.sh [--stage-only] BIN_DIR OUT_DIR}
OUT_DIR=${2:?usage: images/build.sh [--stage-only] BIN_DIR OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

VERSION=${VERSION:-$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/breakwater/Chart.yaml")}
# The commit; "-dirty" when the work tree has changes the commit does not.
if [ -z "${REVISION:-}" ]; then
  REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  [ -z "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] || REVISION="$REVISION-dirty"
fi
SOURCE=${SOURCE:-https://github.com/breakwater-dev/breakwater}
# The commit's time: the images' creation time and every file's mtime.
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

tools="file ldd tar"
$STAGE_ONLY || tools="$tools umoci python3"
for tool in $tools; do
  command -v "$tool" >/dev/null || { echo "images/build.sh: $tool is missing (make images installs it)" >&2; exit 1; }
done

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STAGE_DIR=$WORK
$STAGE_ONLY && STAGE_DIR=$OUT_DIR

# stage NAME: an empty root filesystem for NAME.
stage() { rm -rf "${STAGE_DIR:?}/$1"; mkdir -p "$STAGE_DIR/$1"; echo "$STAGE_DIR/$1"; }

# install_bin ROOTFS BINARY: the static binary at /usr/local/bin.
install_bin() {
  local bin="$BIN_DIR/$2"
  [ -x "$bin" ] || { echo "images/build.sh: $bin is not built" >&2; exit 1; }
  if ! file -b "$bin" | grep -q 'static'; then
    echo "images/build.sh: $bin is not statically linked" >&2; exit 1
  fi
  install -D -m 0755 "$bin" "$1/usr/local/bin/$2"
}

# install_iptables ROOTFS: Debian's iptables (nft backend): the multi-call binary, its command
# names, the libraries it and its extensions load, and every extension (iptables-save prints
# rules other tools wrote, and needs their extension to do so).
install_iptables() {
  local root=$1 multi=/usr/sbin/xtables-nft-multi libdir=/usr/lib/x86_64-linux-gnu
  [ -x "$multi" ] || { echo "images/build.sh: $multi missing (Debian's iptables package)" >&2; exit 1; }
  install -D -m 0755 "$multi" "$root/usr/sbin/xtables-nft-multi"
  for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s xtables-nft-multi "$root/usr/sbin/$name"
  done
  mkdir -p "$root$libdir/xtables"
  cp "$libdir"/xtables/*.so "$root$libdir/xtables/"
  # The shared libraries the binary and the extensions need, at their real paths (usrmerge),
  # under the names the loader asks for.
  local lib real
  while read -r lib; do
    real=$(readlink -f "$lib")
    install -D -m 0644 "$real" "$root$libdir/$(basename "$lib")"
  done < <(ldd "$multi" "$libdir"/xtables/*.so | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
  install -D -m 0755 "$(readlink -f /lib64/ld-linux-x86-64.so.2)" "$root$libdir/ld-linux-x86-64.so.2"
  mkdir -p "$root/usr/lib64"
  ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/usr/lib64/ld-linux-x86-64.so.2"
  ln -s usr/lib64 "$root/lib64"
}

# image NAME ROOTFS USER ENTRYPOINT TITLE: NAME.oci.tar from ROOTFS, one layer.
image() {
  local name=$1 rootfs=$2 user=$3 entrypoint=$4 title=$5
  local layout="$WORK/layout-$name" ref="$WORK/layout-$name:$VERSION"
  # Same owner, permissions and time for every entry, whatever the checkout's umask and clock.
  chown -R -h 0:0 "$rootfs"
  find "$rootfs" -type d -exec chmod 0755 {} +
  find "$rootfs" -exec touch -h -d "@$EPOCH" {} +
  $STAGE_ONLY && return 0
  umoci init --layout "$layout"
  umoci new --image "$ref"
  umoci insert --image "$ref" --history.created "$CREATED" \
    --history.created_by "images/build.sh: $title at $REVISION" "$rootfs" /
  umoci config --no-history --image "$ref" \
    --created "$CREATED" --os linux --architecture amd64 \
    --config.user "$user" --config.entrypoint "$entrypoint" --config.env "$PATH_ENV" \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=$title" \
    --config.label "org.opencontainers.image.source=$SOURCE" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.created=$CREATED" \
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
  umoci gc --layout "$layout"
  find "$layout" -exec touch -h -d "@$EPOCH" {} +
  tar --create --file "$OUT_DIR/$name.oci.tar.tmp" --directory "$layout" --sort=name \
    --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
  mv "$OUT_DIR/$name.oci.tar.tmp" "$OUT_DIR/$name.oci.tar"
  # The manifest's digest: what a registry will call this image.
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' \
    "$layout/index.json" > "$OUT_DIR/$name.digest"
  printf '%-14s %s  %s\n' "$name" "$(cat "$OUT_DIR/$name.digest")" "$OUT_DIR/$name.oci.tar"
}

root=$(stage sidecar)
install_bin "$root" breakwater-sidecar
install_iptables "$root"
image sidecar "$root" 2102:2102 /usr/local/bin/breakwater-sidecar "Breakwater sidecar"

root=$(stage operator)
install_bin "$root" breakwater-operator
image operator "$root" 65532:65532 /usr/local/bin/breakwater-operator "Breakwater operator"

root=$(stage fault-server)
install_bin "$root" breakwater-fault
image fault-server "$root" 65532:65532 /usr/local/bin/breakwater-fault "Breakwater fault server"

root=$(stage e2e-client)
install_bin "$root" breakwater-e2e-client
image e2e-client "$root" 65532:65532 /usr/local/bin/breakwater-e2e-client "Breakwater e2e client"
