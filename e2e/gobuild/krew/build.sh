#!/usr/bin/env bash
# Builds krew (sigs.k8s.io/krew), kubectl's plugin manager, once per version: the plugin test
# installs the kubectl-breakwater archive with it, from the repository's krew manifest.
#
#   ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/krew-<v>/bin/krew
#
# `build.sh path` prints that path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../cached.sh
source "$here/../cached.sh"
# shellcheck source=../scratch.sh
source "$here/../scratch.sh"
cached_tool krew "krew-$KREW_VERSION" krew "the plugin test builds krew from its Go module." "$@"
go_scratch
start=$(date +%s)
echo "krew: building krew $KREW_VERSION (first time only)..."
CGO_ENABLED=0 GOBIN="$dir/bin" go install "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION"
echo "krew: built $bin in $(( $(date +%s) - start ))s"
