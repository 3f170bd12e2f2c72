#!/usr/bin/env bash
# Builds crane (go-containerregistry) once per version, for its `crane registry serve`: a real OCI
# distribution registry in memory that the image tests push to and pull from.
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/crane-<v>/bin/crane
#
# `build.sh path` prints that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cached.sh
source "$here/../cached.sh"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cached_tool crane "crane-$CRANE_VERSION" crane "the image tests build crane from its Go module." "$@"
go_scratch
start=$(date +%s)
echo "crane: building go-containerregistry's crane $CRANE_VERSION (first time only)..."
CGO_ENABLED=0 GOBIN="$dir/bin" go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
echo "crane: built $bin in $(( $(date +%s) - start ))s"
