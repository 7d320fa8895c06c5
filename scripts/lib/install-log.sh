# Shared by the scripts/install-*.sh: quiet steps whose output goes to a log file, and failures
# that say which step failed and show the log's last lines. Source it after setting
#   NAME  the script's name, for messages      LOG  the log file (emptied here)
# shellcheck shell=bash
: >"$LOG"

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() {
    say "FAILED: $*" >&2
    if [ -s "$LOG" ]; then
        say "last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}
# run STEP CMD...: run quietly, keep the output in the log, fail loudly with it.
run() {
    local step="$1"
    shift
    printf '\n$ %s\n' "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || die "$step"
}
