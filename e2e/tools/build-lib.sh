# Helpers shared by the build scripts (e2e/controlplane/build.sh, e2e/node/build.sh). Sourced, never executed.
# The caller sets `set -Eeuo pipefail` and, before using the helpers below, these variables:
#   TIMES   file that collects "name seconds" lines (timed)
#   STAGE   scratch dir on the same filesystem as BIN (install_artefact)
#   BIN     destination bin/ dir (install_artefact)

NICE=(nice -n "${BUILD_NICE:-10}")

# timed NAME CMD...: run CMD, print and record its wall time.
timed() {
    local name="$1" t0=$SECONDS dt
    shift
    "$@"
    dt=$((SECONDS - t0))
    printf '[build] %-34s %3dm%02ds\n' "$name" $((dt / 60)) $((dt % 60))
    printf '%s %d\n' "$name" "$dt" >>"$TIMES"
}

# json_field FIELD: read one JSON object on stdin, print FIELD (python3 is a project prerequisite anyway).
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1]) or "")' "$1"; }

# first_line CMD...: the first line of CMD's output. CMD's output is captured whole, never piped into
# `head`: head exits after one line, CMD dies of SIGPIPE, and pipefail turns that 141 into a failure.
first_line() { local out; out="$("$@")"; printf '%s\n' "${out%%$'\n'*}"; }

# install_artefact NAME: atomically move a staged binary into bin/.
install_artefact() { chmod 0755 "$STAGE/$1"; mv -f "$STAGE/$1" "$BIN/$1"; }
