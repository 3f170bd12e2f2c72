#!/usr/bin/env bash
# make push: copies the OCI archives `make images` wrote to a registry, digests unchanged.
#
#   images/push.sh REGISTRY TAG DIR NAME...
#
# Each DIR/NAME.oci.tar goes to REGISTRY/breakwater/NAME:TAG — the references the chart renders
# with `--set imageRegistry=REGISTRY` (and the tag it defaults to, its appVersion). skopeo reads
# credentials from `skopeo login REGISTRY` or ~/.docker/config.json. SKOPEO_FLAGS adds flags to
# each copy (e.g. `--dest-tls-verify=false` for a registry without TLS).
set -euo pipefail

usage="usage: make push REGISTRY=registry.example.com/team [TAG=version]"
REGISTRY=${1:-}
TAG=${2:-}
DIR=${3:?$usage}
shift 3
[ -n "$REGISTRY" ] || { echo "$usage" >&2; exit 2; }
[ -n "$TAG" ] || { echo "$usage (TAG may not be empty)" >&2; exit 2; }
REGISTRY=${REGISTRY%/}
case "$REGISTRY" in
  *://*) echo "REGISTRY is a host and path, not a URL: ${REGISTRY#*://}" >&2; exit 2 ;;
esac
command -v skopeo >/dev/null || { echo "skopeo is missing (make push installs it)" >&2; exit 1; }

for name in "$@"; do
  archive="$DIR/$name.oci.tar"
  [ -f "$archive" ] || { echo "$archive is missing: run make images" >&2; exit 1; }
  # The archive holds one image, tagged with the version it was built as.
  ref=$(tar -xOf "$archive" ./index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])')
  dest="$REGISTRY/breakwater/$name:$TAG"
  # shellcheck disable=SC2086
  skopeo copy --quiet --preserve-digests ${SKOPEO_FLAGS:-} "oci-archive:$archive:$ref" "docker://$dest"
  echo "pushed $dest ($(cat "$DIR/$name.digest"))"
done
