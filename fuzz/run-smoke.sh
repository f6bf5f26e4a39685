#!/usr/bin/env bash
# A short bounded run of every fuzz target on the committed corpus, for CI.
# The committed corpus is read, never written: new inputs go to a temp dir.
#   fuzz/run-smoke.sh            SECONDS=20 per target
#   SECONDS_PER_TARGET=60 fuzz/run-smoke.sh
# Exits non-zero on the first finding; the crashing input is in
# fuzz/artifacts/<target>/ (commit it to fuzz/corpus/<target>/ once fixed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
secs=${SECONDS_PER_TARGET:-20}
targets=(config_loader spiffe_id normalize_path svid_verify)
cargo +nightly fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== $t (${secs}s)"
  status=0
  cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || status=$?
  grep -E '^(#[0-9]+.*DONE|==[0-9]+==|SUMMARY|thread .* panicked)' "$scratch/$t.log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$scratch/$t.log"
    echo "finding in $t: see fuzz/artifacts/$t"
    exit 1
  fi
done
echo "all targets ran ${secs}s without a finding"
