#!/usr/bin/env bash
# The workspace gates: formatting, clippy with warnings as errors, cargo-deny (licenses, advisories, bans,
# sources; deny.toml), and every fuzz target of the sidecar and the authorization server for
# MCP_AUTHZ_FUZZ_SECONDS each (20 by default; 0 skips them and says so).
# The fuzz targets are built without a sanitizer (`-s none`): every crate they reach forbids unsafe code, so
# AddressSanitizer would instrument only the C libraries (SQLite, aws-lc) at the cost of a build longer than the
# rest of a fresh run; panics, aborts, overflow checks (`-O` keeps debug assertions) and the 2 GiB memory limit are
# what a run finds. MCP_AUTHZ_FUZZ_SANITIZER=address brings ASan back for a deeper run.
# Needs tests/setup/60-rust-gates.sh (tests/run-all sources it).
#
# Offline: cargo-deny's advisories check needs its advisory database (a git clone of RustSec's repository);
# CI's machines reach no git host, so when no copy is there the advisories check
# is skipped and says so (a copy placed in $CARGO_HOME/advisory-dbs is used, never updated). Licenses, bans and sources need only Cargo.lock and the registry's crate metadata.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MCP_AUTHZ_CACHE="${MCP_AUTHZ_CACHE:-$HOME/.cache/mcp-authz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MCP_AUTHZ_CACHE/target}"
fuzz_seconds="${MCP_AUTHZ_FUZZ_SECONDS:-20}"
fuzz_sanitizer="${MCP_AUTHZ_FUZZ_SANITIZER:-none}"
passed=0 failed=0
gate() { # name command...
  local name="$1" start=$SECONDS
  shift
  echo "-- gate: $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "-- gate: $name passed ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    echo "-- gate: $name FAILED ($((SECONDS - start)) s)"
  fi
}

gate "cargo fmt --check" cargo fmt --all --check
gate "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

# cargo deny reads every crate of the lock file, those of other targets too (rusqlite's wasm-only crates), which
# a build for this machine never downloads: fetch them all first, since deny itself runs offline.
gate "cargo fetch (every target's crates, for cargo deny)" cargo fetch --locked

advisory_db="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
# A usable copy is a clone with a commit: an attempt to fetch that failed leaves an empty one behind.
usable_db=no
for d in "$advisory_db"/*/; do
  if [ -d "$d" ] && git -C "$d" rev-parse --verify -q HEAD >/dev/null 2>&1; then usable_db=yes; fi
done
if [ "$usable_db" = yes ]; then
  gate "cargo deny (all checks)" cargo deny --workspace --locked --offline check
else
  echo "-- gate: cargo deny advisories skipped: no usable advisory database in $advisory_db (it cannot be fetched offline)"
  gate "cargo deny (licenses, bans, sources)" cargo deny --workspace --locked --offline check licenses bans sources
fi

# Fuzzing: a nightly build in its own target directory.
fuzz() { # crate-dir target
  local log seeds=()
  log="$(mktemp)"
  # A target's committed seeds (fuzz/seeds/<target>) start it past the shallow inputs; new finds go to the
  # git-ignored fuzz/corpus/<target>.
  if [ -d "$1/fuzz/seeds/$2" ]; then seeds=("corpus/$2" "seeds/$2"); mkdir -p "$1/fuzz/corpus/$2"; fi
  if (cd "$1/fuzz" && CARGO_TARGET_DIR="$MCP_AUTHZ_CACHE/target-fuzz" cargo +nightly fuzz run "$2" "${seeds[@]}" \
    -O -s "$fuzz_sanitizer" -- -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done)" "$log" || true
    rm -f "$log"
  else
    # What a developer needs first: the input that failed and how to run it again; then the fuzzer's last words.
    echo "   the failing input and how to reproduce it:"
    grep -E "(Failing input|Reproduce with|Test unit written to|artifact_prefix|Minimize test case with)" "$log" | sed 's/^/   /' || true
    for artifact in "$1"/fuzz/artifacts/"$2"/*; do
      [ -f "$artifact" ] || continue
      echo "   $artifact ($(wc -c <"$artifact") bytes), base64: $(head -c 4096 "$artifact" | base64 -w0)"
    done
    tail -40 "$log"
    rm -f "$log"
    return 1
  fi
}
if [ "$fuzz_seconds" -gt 0 ]; then
  for dir in sidecar authserver; do
    # One build per crate, timed apart from the runs.
    gate "fuzz build $dir (-s $fuzz_sanitizer)" bash -c "cd '$dir/fuzz' && CARGO_TARGET_DIR='$MCP_AUTHZ_CACHE/target-fuzz' cargo +nightly fuzz build -O -s '$fuzz_sanitizer'"
    for target in $(cd "$dir/fuzz" && cargo +nightly fuzz list); do
      gate "fuzz $dir/$target (${fuzz_seconds} s)" fuzz "$dir" "$target"
    done
  done
else
  echo "-- gate: fuzzing skipped (MCP_AUTHZ_FUZZ_SECONDS=0)"
fi

echo "gates: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
