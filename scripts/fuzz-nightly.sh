#!/usr/bin/env bash
# Nightly fuzzing: runs every Go fuzz target (func FuzzXxx) of the module
# for FUZZTIME each (default 60s), then prints one line per target with its
# executions and new corpus entries. The targets that drive the HTTP
# handlers on a database run once per engine in FUZZ_ENGINES (default
# "sqlite postgres"; PostgreSQL at AGENTSPACE_TEST_POSTGRES or
# postgres://postgres@127.0.0.1:5432). Exits non-zero if any target failed;
# go test writes the failing input to <package>/testdata/fuzz/<Target>/, where
# it then runs as a regression seed in every `go test`.
#
#   scripts/fuzz-nightly.sh                      # everything, 60 s per target and engine
#   FUZZTIME=10m scripts/fuzz-nightly.sh         # longer
#   FUZZ_ONLY='FuzzEventContent|FuzzLoad' FUZZ_ENGINES=sqlite scripts/fuzz-nightly.sh
#   FUZZ_ONLY='^FuzzParse$' scripts/fuzz-nightly.sh   # appservice registration files only
#
# Other settings: FUZZ_PARALLEL (fuzz workers per target, default: all
# cores), FUZZ_SUMMARY (also write the summary table to this file).
# New interesting inputs stay in Go's cache, $(go env GOCACHE)/fuzz/<pkg>/<Target>;
# copy the worthwhile ones into testdata/fuzz/<Target>/ to keep them.
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-60s}
engines=${FUZZ_ENGINES:-sqlite postgres}
only=${FUZZ_ONLY:-.}
parallel=${FUZZ_PARALLEL:-$(nproc)}
export CGO_ENABLED=1

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
printf '%-24s %-12s %-9s %12s %8s  %s\n' target package engine execs new result >"$summary"
failed=0

# Package directories with fuzz targets, then the targets of each.
for dir in $(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u); do
  pkg=$(go list "$dir")
  for target in $(grep -h -o '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go | sed 's/^func //' | sort -u); do
    [[ "$target" =~ $only ]] || continue
    file=$(grep -l "^func $target(" "$dir"/*_test.go)
    # Targets built on newFuzzEnv run the handlers on a database: once per engine.
    target_engines=sqlite
    if grep -q 'newFuzzEnv(' "$file"; then target_engines=$engines; fi
    for engine in $target_engines; do
      log=$(mktemp)
      echo "=== $target ($pkg, $engine, $fuzztime)" >&2
      status=ok
      engine_env=()
      [ "$engine" = postgres ] && engine_env=(AGENTSPACE_TEST_ENGINE=postgres)
      if ! env "${engine_env[@]}" go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" \
          -parallel "$parallel" -timeout 0 "$pkg" >"$log" 2>&1; then
        status=FAILED
        failed=1
        grep -v '^fuzz: elapsed' "$log" | tail -n 40 >&2
      fi
      last=$(grep '^fuzz: elapsed' "$log" | tail -n 1 || true)
      execs=$(sed -n 's/.*execs: \([0-9]*\).*/\1/p' <<<"$last")
      newc=$(sed -n 's/.*new interesting: \([0-9]*\).*/\1/p' <<<"$last")
      printf '%-24s %-12s %-9s %12s %8s  %s\n' "$target" "${dir#./}" "$engine" "${execs:-?}" "${newc:-?}" "$status" >>"$summary"
      rm -f "$log"
    done
  done
done

cat "$summary"
[ -n "${FUZZ_SUMMARY:-}" ] && cp "$summary" "$FUZZ_SUMMARY"
exit "$failed"
