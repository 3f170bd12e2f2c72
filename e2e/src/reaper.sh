#!/usr/bin/env bash
# The e2e reaper: started by the test process with a pipe on stdin, it waits for that pipe to close
# (the test process exited, panicked or was killed) and then removes what the cluster left:
# processes in the cluster's pod namespaces, control-plane processes by pid, the namespaces, the
# bridge and the iptables chains, and the cluster's directory. Everything is found by id: the pids
# recorded in $dir/pids (only if their command line still names $dir) and the network index in
# $dir/network (names as in src/network.rs). Idempotent: what is already gone is skipped.
#
# usage: reaper.sh DIR KEEP   (KEEP=1 leaves DIR, with the logs, in place)
trap '' INT TERM HUP PIPE
dir="$1"; keep="$2"
read -r _ || true

x="$(cat "$dir/network" 2>/dev/null || true)"
if [[ "$x" =~ ^[0-9]+$ ]]; then
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^bwe2e$x-p[0-9]+$"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
fi

ours() { [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$dir"; }
pids=()
if [[ -f "$dir/pids" ]]; then
  while read -r pid; do [[ "$pid" =~ ^[0-9]+$ ]] && ours "$pid" && pids+=("$pid"); done <"$dir/pids"
fi
# Stop in reverse start order (scheduler and controller-manager before the API server before etcd).
for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null; done
for _ in $(seq 50); do
  alive=0
  for pid in "${pids[@]}"; do ours "$pid" && alive=1; done
  ((alive)) || break
  sleep 0.1
done
for pid in "${pids[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done

if [[ "$x" =~ ^[0-9]+$ ]]; then
  ipt() { iptables -w "$@" 2>/dev/null; }
  ipt -t nat -D PREROUTING -d "198.19.$x.0/24" -j "BWE2E$x-SVC"
  ipt -t nat -D OUTPUT -d "198.19.$x.0/24" -j "BWE2E$x-SVC"
  ipt -t nat -D POSTROUTING -o "bwe2e$x" -j "BWE2E$x-POST"
  ipt -t filter -D FORWARD -i "bwe2e$x" -j "BWE2E$x-FWD"
  for c in nat:SVC nat:POST filter:FWD; do
    ipt -t "${c%%:*}" -F "BWE2E$x-${c#*:}"
    ipt -t "${c%%:*}" -X "BWE2E$x-${c#*:}"
  done
  ip link del "bwe2e$x" 2>/dev/null
fi

if [[ "$keep" == 1 ]]; then
  echo "breakwater-e2e: kept $dir (logs of every control-plane process and pod)" >&2
else
  rm -rf -- "$dir"
fi
