#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer, on the stable toolchain.
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Builds the targets in fuzz/fuzz_targets with libFuzzer's coverage instrumentation and runs
# each for SECONDS, starting from its corpus in fuzz/corpus/TARGET (checked in) plus what
# earlier runs found (target/fuzz/corpus/TARGET, where new inputs go). A crash stops the run,
# exits non-zero and leaves the input in target/fuzz/artifacts/TARGET/; replay it with
# `target/fuzz/<triple>/fuzz/TARGET FILE`, and once fixed, add it to fuzz/corpus/TARGET.
#
# Why libFuzzer this way rather than cargo-fuzz or AFL: cargo-fuzz needs a nightly toolchain for
# its sanitizer flags, and neither this machine's CI nor a newcomer's has one; the coverage
# instrumentation itself (`-C passes=sancov-module` and its LLVM options) is stable, and the
# libfuzzer-sys crate builds libFuzzer with the system C++ compiler. AFL++ would need its own
# C toolchain and a fork server. What is lost without nightly is AddressSanitizer, which safe
# Rust (the sidecar forbids unsafe code) needs least.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
seconds="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(request_front config_file snapshot_wire)

triple="$(rustc -vV | sed -n 's/^host: //p')"
# What cargo-fuzz passes, minus the sanitizer: edge coverage with 8-bit counters, the PC table
# libFuzzer reads, comparison tracing (it learns magic values such as "HTTP/1.1" from it),
# and debug assertions and overflow checks on, as in a test build.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# --target: build scripts and proc macros stay uninstrumented.
cargo build --profile fuzz --locked -p breakwater-fuzz --features libfuzzer --target "$triple" \
  --target-dir "$root/target/fuzz" --bins

status=0
for t in "${targets[@]}"; do
  work="$root/target/fuzz/corpus/$t"
  artifacts="$root/target/fuzz/artifacts/$t"
  log="$root/target/fuzz/$t.log"
  mkdir -p "$work" "$artifacts"
  dict=()
  [[ -f "$here/dict/$t.dict" ]] && dict=(-dict="$here/dict/$t.dict")
  echo "fuzz: $t for ${seconds}s"
  if "$root/target/fuzz/$triple/fuzz/$t" -max_total_time="$seconds" -max_len=8192 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
      "$work" "$here/corpus/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    echo "fuzz: $t: $runs executions, $cov edges, corpus $(ls "$work" | wc -l) new + $(ls "$here/corpus/$t" | wc -l) checked in, no crash"
  else
    status=1
    echo "fuzz: $t FAILED; the input is in $artifacts/; libFuzzer's account:" >&2
    grep -A30 -E "^==[0-9]+==|panicked|deadly signal|ERROR: libFuzzer" "$log" | head -60 >&2
  fi
done
exit $status
