#!/usr/bin/env bash
# Installs the test dependencies, runs Bun's whole suite, then the Deno
# subset (deno.json's test.include, through the bun:test shim), and ends with
# one line "N passed, N failed" over both; exits non-zero if anything failed
# in either. Arguments go to `bun test`; the Deno subset keeps the files whose
# path contains one of the non-option arguments (all of them when there are
# none), as bun test's path filters do.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || { echo "0 passed, 1 failed"; exit 1; }
mkdir -p .tmp
rm -f .tmp/test-output.txt .tmp/test-output-deno.txt

bun test --timeout 60000 "$@" 2>&1 | tee .tmp/test-output.txt
bun_status=${PIPESTATUS[0]}
bun_passed=$(grep -Eo '^ *[0-9]+ pass$' .tmp/test-output.txt | tail -n 1 | grep -Eo '[0-9]+')
bun_failed=$(grep -Eo '^ *[0-9]+ fail$' .tmp/test-output.txt | tail -n 1 | grep -Eo '[0-9]+')
bun_passed=${bun_passed:-0} bun_failed=${bun_failed:-0}
# A crash before bun's summary still counts as a failure.
if [ "$bun_status" -ne 0 ] && [ "$bun_failed" -eq 0 ]; then bun_failed=1; fi

filters=()
for a in "$@"; do [[ "$a" == -* ]] || filters+=("$a"); done
deno_files=()
while IFS= read -r f; do
  keep=$(( ${#filters[@]} == 0 ))
  for p in "${filters[@]}"; do [[ "$f" == *"$p"* ]] && keep=1; done
  [ "$keep" -eq 1 ] && deno_files+=("$f")
done < <(bun -e 'for (const f of require("./deno.json").test.include) console.log(f)')

deno_status=0 deno_passed=0 deno_failed=0
if [ ${#deno_files[@]} -gt 0 ]; then
  echo
  echo "deno test (${#deno_files[@]} files of deno.json's test.include)"
  NO_COLOR=1 node_modules/deno/deno test -A --no-check "${deno_files[@]}" 2>&1 | tee .tmp/test-output-deno.txt
  deno_status=${PIPESTATUS[0]}
  # Deno's summary: "ok | 81 passed | 0 failed | 1 ignored (26s)" or "FAILED | 80 passed | 1 failed (27s)".
  summary=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' .tmp/test-output-deno.txt | tail -n 1)
  deno_passed=$(grep -Eo '[0-9]+ passed' <<<"$summary" | grep -Eo '[0-9]+')
  deno_failed=$(grep -Eo '\| [0-9]+ failed' <<<"$summary" | grep -Eo '[0-9]+')
  deno_passed=${deno_passed:-0} deno_failed=${deno_failed:-0}
  if [ "$deno_status" -ne 0 ] && [ "$deno_failed" -eq 0 ]; then deno_failed=1; fi
fi

echo
# The failed tests by name, so that the tail of a long log says what failed.
if [ "$bun_failed" -ne 0 ] || [ "$deno_failed" -ne 0 ]; then
  echo "failed:"
  grep -E '^\(fail\) ' .tmp/test-output.txt | sed 's/^/  bun  /' | sort -u
  [ -f .tmp/test-output-deno.txt ] && grep -E ' => \./.*:[0-9]+:[0-9]+$' .tmp/test-output-deno.txt | sed 's/^/  deno /' | sort -u
  [ "$bun_status" -ne 0 ] && ! grep -qE '^\(fail\) ' .tmp/test-output.txt && echo "  bun exited with status $bun_status before or after its tests (see the log above)"
fi
echo "bun:  ${bun_passed} passed, ${bun_failed} failed"
echo "deno: ${deno_passed} passed, ${deno_failed} failed"
echo "$((bun_passed + deno_passed)) passed, $((bun_failed + deno_failed)) failed"
[ "$bun_status" -eq 0 ] && [ "$bun_failed" -eq 0 ] && [ "$deno_status" -eq 0 ] && [ "$deno_failed" -eq 0 ]
