#!/usr/bin/env bash
# Packs the kubectl-breakwater binary with the LICENSE into the archive krew installs
# (`.krew.yaml`), reproducibly: one commit gives one sha256 (sorted entries, root-owned, the
# commit's time as every mtime, gzip without a name or time). Writes ARCHIVE and ARCHIVE.sha256.
#
#   kubectl/package.sh BINARY ARCHIVE
set -euo pipefail

binary=$1 archive=$2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$binary" ]] || { echo "package.sh: $binary is not an executable (build it first)" >&2; exit 1; }
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$binary" "$stage/kubectl-breakwater"
install -m 0644 "$root/LICENSE" "$stage/LICENSE"
mkdir -p "$(dirname "$archive")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -C "$stage" -cf - kubectl-breakwater LICENSE | gzip -9 -n >"$archive"
(cd "$(dirname "$archive")" && sha256sum "$(basename "$archive")" >"$(basename "$archive").sha256")
echo "$archive: $(cut -d' ' -f1 "$archive.sha256") ($(du -h "$archive" | cut -f1))"
