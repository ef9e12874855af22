# Shared helpers for deploy/local/*.sh: paths, logging, pid files, port ownership.
# Sourced, not run. Everything lives under $LOCAL_DIR (default <repo>/.local, git-ignored).

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LOCAL_DIR=${LOCAL_DIR:-$REPO_ROOT/.local}
DEPLOY_DIR="$REPO_ROOT/deploy/local"

log() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Milliseconds since the epoch, for "ready in 1.2s" reports.
now_ms() { date +%s%3N; }
elapsed() { local ms=$(( $(now_ms) - $1 )); printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100)); }

require_port_number() { # NAME VALUE
    [[ $2 =~ ^[0-9]+$ ]] && (( $2 > 0 && $2 < 65536 )) ||
        die "$1 must be a TCP port number (1-65535), got '$2'"
}

# True while process $1 runs; a zombie (exited, not yet reaped by its parent) counts as gone.
pid_alive() {
    [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null &&
        ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

read_pid() { [[ -f $1 ]] && tr -dc '0-9' <"$1" || true; }

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# Pid of the process listening on TCP port $1 on any address ("" when none or unknown).
port_owner_pid() {
    ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [[ -n $(ss -ltnH "sport = :$1" 2>/dev/null) ]]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Fails with a clear message when port $2 (named by env var $1) is taken by a
# process that is not ours: we never stop or reuse someone else's server.
require_port_free() { # ENV_NAME PORT WHAT
    port_in_use "$2" || return 0
    local pid who
    pid=$(port_owner_pid "$2")
    who=${pid:+pid $pid: $(cmdline_of "$pid" | cut -c1-160)}
    die "port $2 ($3) is already in use by a process this script did not start${who:+ ($who)}; stop it or choose another port with $1=<port>"
}

# Stops the process in pid file $1 (TERM, then KILL after $2 seconds) and removes the file.
stop_pid_file() { # PIDFILE GRACE_SECONDS NAME
    local pid deadline
    pid=$(read_pid "$1")
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(date +%s) + $2 ))
        while pid_alive "$pid" && (( $(date +%s) < deadline )); do sleep 0.2; done
        if pid_alive "$pid"; then
            log "$3: did not stop within $2s, sending KILL to pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            while pid_alive "$pid"; do sleep 0.1; done
        fi
    fi
    rm -f "$1"
}

# Serialises up/down/reset of one service across concurrent callers (two test sessions,
# two engineers' `make test`): the second waits, then finds the service up. Processes
# started while holding the lock must not inherit fd 9 (start them with 9>&-).
lock_service() { # DIR
    mkdir -p "$1"
    exec 9>"$1/.lock"
    flock -w 300 9 || die "another deploy/local script has held $1/.lock for 5 minutes"
}
