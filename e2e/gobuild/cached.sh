# Sourced by the one-tool builders (otelcol/build.sh, crane/build.sh): versions, the cache path
# and the steps every such builder starts with.
#
#   cached_tool NAME DIR BINARY WHY "$@"
#
# sets $bin to ${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/DIR/bin/BINARY; with `path` as the
# script's argument prints it and exits; exits if it is already built; fails, saying WHY Go is
# needed, when `go` is missing. Otherwise returns, and the caller builds it.
# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"

cached_tool() {
  local name=$1 binary=$3 why=$4
  dir=$2
  shift 4
  cache="${BREAKWATER_CACHE:-$HOME/.cache/breakwater}"
  dir="$cache/$dir"
  bin="$dir/bin/$binary"
  if [[ "${1:-}" == "path" ]]; then
    echo "$bin"
    exit 0
  fi
  if [[ -x "$bin" ]]; then
    exit 0
  fi
  command -v go >/dev/null 2>&1 || {
    echo "$name: 'go' is not on PATH; $why Install Go >= 1.26." >&2
    exit 1
  }
}
