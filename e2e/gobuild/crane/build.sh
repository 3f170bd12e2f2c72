#!/usr/bin/env bash
# Builds crane (go-containerregistry) once per version, for its `crane registry serve`: a real OCI
# distribution registry in memory that the image tests push to and pull from.
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/crane-<v>/bin/crane
#
# `build.sh path` prints that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../versions.env
source "$here/../versions.env"
cache="${BREAKWATER_CACHE:-$HOME/.cache/breakwater}"
dir="$cache/crane-$CRANE_VERSION"
bin="$dir/bin/crane"

if [[ "${1:-}" == "path" ]]; then
  echo "$bin"
  exit 0
fi
if [[ -x "$bin" ]]; then
  exit 0
fi
command -v go >/dev/null 2>&1 || {
  echo "crane: 'go' is not on PATH; the image tests build crane from its Go module. Install Go >= 1.26." >&2
  exit 1
}
start=$(date +%s)
echo "crane: building go-containerregistry's crane $CRANE_VERSION (first time only)..."
CGO_ENABLED=0 GOBIN="$dir/bin" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
echo "crane: built $bin in $(( $(date +%s) - start ))s"
