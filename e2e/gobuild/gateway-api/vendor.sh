#!/usr/bin/env bash
# Vendors the Gateway API's standard-channel CustomResourceDefinitions into the chart, from the
# Go module sigs.k8s.io/gateway-api at GATEWAY_API_VERSION (versions.env): every
# config/crd/standard/gateway.networking.k8s.io_*.yaml CRD, in name order, as one file, with its
# SHA-256 beside it. The chart installs them when `gatewayAPI.installCRDs` is true. The
# `safe-upgrades` ValidatingAdmissionPolicy of the release is left out: it only guards
# upgrades to the experimental channel, and without its binding it would do nothing anyway.
#
#   charts/breakwater/files/gateway-api-standard.yaml (+ .sha256)
#
# Run it to move to another version (then `make test`: the chart test checks the checksum and
# installs the CRDs on the harness's API server).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
chart="$here/../../../charts/breakwater/files"
command -v go >/dev/null 2>&1 || { echo "gateway-api: 'go' is not on PATH (Go >= 1.26 is needed)" >&2; exit 1; }
go_scratch
module="sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
src="$(cd "$go_scratch" && GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$src/config/crd/standard" ]] || { echo "gateway-api: no config/crd/standard in $module" >&2; exit 1; }
out="$chart/gateway-api-standard.yaml"
{
  echo "# The Gateway API's standard channel CRDs, $GATEWAY_API_VERSION, from the Go module"
  echo "# sigs.k8s.io/gateway-api (config/crd/standard). Vendored by e2e/gobuild/gateway-api/vendor.sh:"
  echo "# do not edit."
  for f in "$src"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
    [[ "$f" == *_vap_* ]] && continue
    echo "---"
    cat "$f"
  done
} > "$out.tmp"
mv "$out.tmp" "$out"
(cd "$chart" && sha256sum gateway-api-standard.yaml > gateway-api-standard.yaml.sha256)
echo "gateway-api: $out ($(wc -c < "$out") bytes) for $GATEWAY_API_VERSION"
