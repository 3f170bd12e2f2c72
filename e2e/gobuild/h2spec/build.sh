#!/usr/bin/env bash
# Builds h2spec (github.com/summerwind/h2spec) once per version: the HTTP/2 conformance suite
# that sidecar/tests/h2spec.rs runs against the sidecar's h2c listeners. go.mod and go.sum
# beside this script pin it and its dependencies (h2spec has no go.mod of its own).
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/h2spec-<v>/bin/h2spec
#
# `build.sh path` prints that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cached.sh
source "$here/../cached.sh"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cached_tool h2spec "h2spec-$H2SPEC_VERSION" h2spec "the HTTP/2 conformance test builds h2spec from its Go module." "$@"
grep -q "github.com/summerwind/h2spec $H2SPEC_VERSION+incompatible" "$here/go.mod" || {
  echo "h2spec: go.mod does not pin $H2SPEC_VERSION (update it with go get -tool)" >&2
  exit 1
}
go_scratch
start=$(date +%s)
echo "h2spec: building h2spec $H2SPEC_VERSION (first time only)..."
(cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$bin" github.com/summerwind/h2spec/cmd/h2spec)
echo "h2spec: built $bin in $(( $(date +%s) - start ))s"
