#!/usr/bin/env bash
# Runs every Criterion test binary given, prints each one's summary and a total; exits non-zero if any fails.
set -u
# Leaks are judged from the reports below (Criterion's own skip leak aside), not from LSan's exit code.
export LSAN_OPTIONS="exitcode=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
failed=0
total_pass=0
total_fail=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" --jobs "${SPECD_TEST_JOBS:-2}" 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -vE '^\[----\]|^$' | tail -n 40
    line=$(printf '%s\n' "$out" | grep -E 'Synthesis: Tested' | tail -n1)
    p=$(printf '%s' "$line" | sed -nE 's/.*Passing: ([0-9]+).*/\1/p')
    f=$(printf '%s' "$line" | sed -nE 's/.*Failing: ([0-9]+).*/\1/p')
    c=$(printf '%s' "$line" | sed -nE 's/.*Crashing: ([0-9]+).*/\1/p')
    total_pass=$((total_pass + ${p:-0}))
    total_fail=$((total_fail + ${f:-0} + ${c:-0}))
    if [ "$rc" -ne 0 ]; then failed=1; [ -z "$line" ] && total_fail=$((total_fail + 1)); fi
    # Sanitizer reports from forked test workers do not change the exit code: count them as failures.
    # Criterion's cr_skip_test() leaks its own message (allocated directly by libcriterion): not ours.
    ours=$(printf '%s\n' "$out" | awk '/allocated from:/ { getline; getline; if ($0 !~ /libcriterion/) print "leak"; next }
                                      /ERROR: AddressSanitizer|runtime error:/ { print "error" }')
    if [ -n "$ours" ]; then
        printf '%s\n' "$out" | grep -E -A12 'ERROR: (Address|Leak)Sanitizer|runtime error:' | head -n 60
        echo "!!! sanitizer report in $t"
        failed=1
        total_fail=$((total_fail + 1))
    fi
done
echo "$total_pass passed, $total_fail failed"
exit $failed
