# The runner shared by scripts/bench-smoke.sh and scripts/measure-issues.sh.
# Sourced, not run (bash). run_benches runs each entry of the array `runs`
# ("NAME|COMMAND", COMMAND a word list; JSON_FILE in it becomes
# $work/NAME.json, for programs that write their JSON to a file) from $root,
# keeps its stdout and stderr in $work/NAME.out and .err, and checks that it
# exited 0 with one valid JSON document, printing the document's shape
# (top-level keys, list lengths) so a run that measured nothing shows; a
# COMMAND starting with "exit-only:" is checked for exit 0 alone (a soak, a
# script that runs the others). It
# skips names not in $only (comma-separated; empty: all), bounds each run by
# $timeout_s, prefixes its lines with $label, and sets $passed and $failed.
# Needs python3.

run_benches() {
    failed=0
    passed=0
    cd "$root" || exit 2
    local entry name command json_file exit_only start status seconds verdict checked shape
    for entry in "${runs[@]}"; do
        name="${entry%%|*}"
        command="${entry#*|}"
        if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then
            continue
        fi
        json_file=""
        exit_only=false
        if [[ "$command" == exit-only:* ]]; then
            exit_only=true
            command="${command#exit-only:}"
        fi
        if [[ "$command" == *JSON_FILE* ]]; then
            json_file="$work/$name.json"
            command="${command//JSON_FILE/$json_file}"
        fi
        start=$(date +%s)
        # shellcheck disable=SC2086 # the command is a word list on purpose
        timeout -k 10 "$timeout_s" $command >"$work/$name.out" 2>"$work/$name.err"
        status=$?
        seconds=$(( $(date +%s) - start ))
        verdict=ok
        shape=""
        if [ "$status" = 124 ]; then
            verdict="timed out after ${timeout_s} s"
        elif [ "$status" != 0 ]; then
            verdict="exit $status"
        elif [ "$exit_only" = true ]; then
            shape="exit 0; output in $name.out"
        else
            checked="${json_file:-$work/$name.out}"
            # The shape: top-level keys, and the length of every list among them.
            if ! shape=$(python3 -c '
import json, sys
value = json.load(open(sys.argv[1]))
if isinstance(value, dict):
    print(" ".join(k + ("[%d]" % len(v) if isinstance(v, list) else "") for k, v in value.items()))
elif isinstance(value, list):
    print("a list of %d" % len(value))
else:
    print(type(value).__name__)' "$checked" 2>&1); then
                verdict="no valid JSON in $(basename "$checked"): ${shape##*$'\n'}"
            fi
        fi
        if [ "$verdict" = ok ]; then
            passed=$((passed + 1))
            printf '%s: %-16s ok (%d s): %s\n' "$label" "$name" "$seconds" "${shape:0:200}"
        else
            failed=$((failed + 1))
            printf '%s: %-16s FAILED: %s (%d s); last lines of stderr:\n' "$label" "$name" "$verdict" "$seconds"
            tail -5 "$work/$name.err" | sed 's/^/    /'
        fi
    done
    echo "$label: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}
