#!/usr/bin/env bash
# A short bounded run of every fuzz target on the committed corpus, for CI.
#   fuzz/run-smoke.sh                          15 s per target
#   SECONDS_PER_TARGET=60 fuzz/run-smoke.sh
#   fuzz/run-smoke.sh spiffe_id                one target
# The committed corpus is read, never written: new inputs go to a temp dir.
# Exits non-zero on the first finding, with the crashing input saved in
# fuzz/artifacts/<target>/ and printed in base64 (a CI clone is thrown away):
# fix the bug, then commit the input to fuzz/corpus/<target>/ as a regression.
#
# It does not need cargo-fuzz: it builds the targets the way
# `cargo +nightly fuzz build -O -a --sanitizer none` does (libfuzzer-sys with
# the same SanitizerCoverage flags, `--cfg fuzzing`, host `--target` so build
# scripts and proc macros are not instrumented, release with debug
# assertions and overflow checks), in one cargo build for all four targets,
# then runs the libFuzzer binaries directly. No sanitizer: the workspace
# forbids unsafe code, so AddressSanitizer would cost a much longer build for
# little; panics, overflows and failed assertions are what we look for.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
secs=${SECONDS_PER_TARGET:-15}
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(config_loader spiffe_id normalize_path svid_verify)
fi
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
# Its own target dir: the flags differ from every other build's.
target_dir=${FUZZ_TARGET_DIR:-$here/target}
# cargo-fuzz -O forces one codegen unit (better inlining under ThinLTO); 16,
# cargo's release default, halves the cold build here for a similar exec/s.
cgu=${FUZZ_CODEGEN_UNITS:-16}

flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  --cfg fuzzing
  -Cdebug-assertions
  -Ccodegen-units="$cgu"
)
start=$SECONDS
RUSTFLAGS="${flags[*]}" cargo +nightly build --locked --release --bins \
  --manifest-path "$here/Cargo.toml" --target "$triple" --target-dir "$target_dir" \
  --config 'profile.release.debug="line-tables-only"'
echo "fuzz targets built in $((SECONDS - start)) s"

bin_dir=$target_dir/$triple/release
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "$here/artifacts/$t"
  echo "== $t (${secs} s on corpus/$t, $(ls "corpus/$t" | wc -l) inputs)"
  status=0
  "$bin_dir/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/" \
    "$scratch/$t" "corpus/$t" >"$scratch/$t.log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*(INITED|DONE)|stat::average_exec_per_sec|SUMMARY|thread .* panicked)' \
    "$scratch/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -60 "$scratch/$t.log"
    # libFuzzer names the input it saved: "Test unit written to <path>".
    for a in $(sed -n 's/.*Test unit written to //p' "$scratch/$t.log"); do
      echo "finding in $t: $a (base64 below)"
      base64 -w 0 "$a"
      echo
    done
    echo "finding in $t (exit $status)"
    exit 1
  fi
done
echo "all ${#targets[@]} fuzz targets ran ${secs} s each without a finding"
