#!/usr/bin/env bash
# Builds promtool (github.com/prometheus/prometheus) once per version: the chart test checks the
# alert rules with `promtool check rules` and unit-tests them with `promtool test rules`.
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/promtool-<v>/bin/promtool
#
# `build.sh path` prints that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cached.sh
source "$here/../cached.sh"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cached_tool promtool "promtool-$PROMTOOL_VERSION" promtool "the alert-rule tests build promtool from the Prometheus Go module." "$@"
go_scratch
start=$(date +%s)
echo "promtool: building Prometheus's promtool $PROMTOOL_VERSION (first time only)..."
# remove_all_sd leaves out the service-discovery plugins (cloud SDKs, client-go), which promtool
# does not need for rules: the build takes about half as long (185 s against 334 s on 2 cores).
CGO_ENABLED=0 GOBIN="$dir/bin" go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
echo "promtool: built $bin in $(( $(date +%s) - start ))s"
