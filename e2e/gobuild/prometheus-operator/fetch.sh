#!/usr/bin/env bash
# Fetches the Prometheus Operator's CustomResourceDefinitions (monitoring.coreos.com/v1
# PodMonitor, ServiceMonitor, PrometheusRule) from its Go module, once per version: the chart
# test installs them on the harness's API server and creates the chart's monitoring objects
# against their schemas, with strict field validation.
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/prometheus-operator-crds-<v>/*.yaml
#
# `fetch.sh path` prints that directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cache="${BREAKWATER_CACHE:-$HOME/.cache/breakwater}"
dir="$cache/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
crds=(podmonitors servicemonitors prometheusrules)
if [[ "${1:-}" == "path" ]]; then
  echo "$dir"
  exit 0
fi
if [[ -f "$dir/monitoring.coreos.com_prometheusrules.yaml" ]]; then
  exit 0
fi
command -v go >/dev/null 2>&1 || {
  echo "prometheus-operator: 'go' is not on PATH; the chart test fetches the Prometheus Operator's CRDs from its Go module. Install Go >= 1.26." >&2
  exit 1
}
go_scratch
module="github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION"
echo "prometheus-operator: fetching the CRDs of $module (first time only)..."
src="$(cd "$go_scratch" && GOFLAGS=-mod=mod go mod download -json "$module" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$src" ]] || { echo "prometheus-operator: go mod download gave no directory for $module" >&2; exit 1; }
mkdir -p "$dir.tmp"
for crd in "${crds[@]}"; do
  cp "$src/example/prometheus-operator-crd/monitoring.coreos.com_$crd.yaml" "$dir.tmp/"
done
chmod -R u+w "$dir.tmp"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
echo "prometheus-operator: CRDs in $dir"
