#!/usr/bin/env bash
# Installs the test dependencies, runs the whole suite and ends with one
# line "N passed, N failed"; exits non-zero if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || { echo "0 passed, 1 failed"; exit 1; }
mkdir -p .tmp
bun test --timeout 60000 "$@" 2>&1 | tee .tmp/test-output.txt
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^ *[0-9]+ pass$' .tmp/test-output.txt | tail -n 1 | grep -Eo '[0-9]+')
failed=$(grep -Eo '^ *[0-9]+ fail$' .tmp/test-output.txt | tail -n 1 | grep -Eo '[0-9]+')
passed=${passed:-0}
failed=${failed:-0}
# A crash before bun's summary still counts as a failure.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "${passed} passed, ${failed} failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
