#!/usr/bin/env bash
# Builds the OpenTelemetry Collector for Breakwater's trace end-to-end test, once per version:
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/otelcol-<v>/bin/otelcol-breakwater
#
# with the collector's own builder (ocb: go.opentelemetry.io/collector/cmd/builder, whose go.mod has
# no replace lines, so `go install` works), from the manifest below: the OTLP receiver and the
# contrib file exporter. Prints the time a build took.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cached.sh
source "$here/../cached.sh"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cached_tool otelcol "otelcol-$OTELCOL_VERSION" otelcol-breakwater \
  "the trace end-to-end test builds the OpenTelemetry Collector from its Go modules." "$@"

go_scratch
start=$(date +%s)
tmp="$go_scratch/otelcol"
mkdir -p "$tmp"
echo "otelcol: building the OpenTelemetry Collector $OTELCOL_VERSION (first time only)..."
GOBIN="$dir/tools" go install "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION"
cat > "$tmp/manifest.yaml" <<MANIFEST
dist:
  name: otelcol-breakwater
  description: OpenTelemetry Collector for Breakwater's trace end-to-end test
  output_path: $tmp/out
  version: ${OTELCOL_VERSION#v}
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $OTELCOL_VERSION
exporters:
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter $OTELCOL_VERSION
providers:
  - gomod: go.opentelemetry.io/collector/confmap/provider/fileprovider $OTELCOL_PROVIDERS_VERSION
  - gomod: go.opentelemetry.io/collector/confmap/provider/envprovider $OTELCOL_PROVIDERS_VERSION
MANIFEST
CGO_ENABLED=0 "$dir/tools/builder" --config "$tmp/manifest.yaml"
mkdir -p "$dir/bin"
install -m 0755 "$tmp/out/otelcol-breakwater" "$bin"
echo "otelcol: built $bin in $(( $(date +%s) - start ))s"
