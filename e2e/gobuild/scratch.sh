# Sourced by every Go builder here (build.sh, otelcol/, crane/, h2spec/).
#
#   go_scratch
#
# points Go's build cache and module cache at a directory of their own, removed when the script
# exits: the binaries are what we keep (in the Breakwater cache), and Go's caches for them take
# about 7.5 GB (5.6 GB of build cache, 1.9 GB of modules for Kubernetes alone), disk a 2-core CI
# machine needs for linking the workspace's tests afterwards. A rebuild happens once per version,
# so nothing is lost but the download. BREAKWATER_GO_CACHE=keep uses Go's usual caches instead
# (faster when you bump versions and rebuild often). Sets $go_scratch (the directory; the caller
# may put its own temporary files in it).
go_scratch() {
  go_scratch="$(mktemp -d "${TMPDIR:-/tmp}/breakwater-gobuild.XXXXXX")"
  # shellcheck disable=SC2064 # the path is fixed now, on purpose
  trap "go_scratch_remove '$go_scratch'" EXIT
  if [[ "${BREAKWATER_GO_CACHE:-}" == "keep" ]]; then
    return
  fi
  export GOCACHE="$go_scratch/build" GOMODCACHE="$go_scratch/mod"
  # The module cache is read-only by default, which would make removing it fail.
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"
}

go_scratch_remove() {
  local took=$SECONDS
  rm -rf "$1"
  echo "gobuild: removed Go's scratch caches in $((SECONDS - took))s" >&2
}
