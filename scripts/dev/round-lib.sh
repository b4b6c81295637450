# Development (device), sourced by the *-round.sh scripts that keep to a time budget: $out (the logs), left
# (seconds of BUDGET left, default $1) and suite NAME TIMEOUT FILES… (a node test run, skipped when under a
# minute is left, with its summary lines).
out=${OUT:-gpu-logs}; mkdir -p "$out"
budget=${BUDGET:-$1}; t0=$SECONDS
left() { echo $((budget - (SECONDS - t0))); }
suite() {
  local name=$1 to=$2; shift 2
  if [ "$(left)" -lt 60 ]; then echo "$name: skipped (time)"; return; fi
  timeout "$to" node --import tsx --test "$@" > "$out/$name.log" 2>&1
  echo "$name rc=$? ($((SECONDS - t0)) s)"
  grep -E "^# (pass|fail)|^not ok|error:|worst|scan rows|scan layouts|kept vs recomputed" "$out/$name.log" | cut -c1-260
}
