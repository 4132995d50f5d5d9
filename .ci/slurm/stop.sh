#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by .ci/slurm/start.sh: only the PIDs it
# recorded in $LN_SLURM_DIR/pids (each checked to still be that daemon), slurmd
# first, then slurmctld, then munged; waits for each to exit. Idempotent.
# Installed packages, the config and the state directory are left in place.
set -euo pipefail

STATE_DIR="${LN_SLURM_DIR:-/var/lib/langneurons-slurm}"
PIDS="$STATE_DIR/pids"
STOP_TIMEOUT="${LN_SLURM_STOP_TIMEOUT:-30}"

log() { echo "[slurm/stop] $*" >&2; }

if [ ! -f "$PIDS" ]; then
    log "no $PIDS: nothing to stop"
    exit 0
fi

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$PIDS"; }
is_daemon() {  # PID NAME: PID is alive (not a zombie) and still is NAME (guards PID reuse)
    [ -n "${1:-}" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
        && ! awk '{ exit !($3 == "Z" || $3 == "X") }' "/proc/$1/stat" 2>/dev/null
}

# Cancel the cluster's jobs first (it is dedicated to this project): a batch
# job's slurmstepd would otherwise outlive slurmd.
if is_daemon "$(pid_of slurmctld)" slurmctld && command -v squeue >/dev/null; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ "${#jobs[@]}" -gt 0 ]; then
        log "cancelling jobs: ${jobs[*]}"
        timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(timeout 10 squeue -h -o %i 2>/dev/null || true)" ] && break
            sleep 0.2
        done
    fi
fi

for name in slurmd slurmctld munged; do
    pid="$(pid_of "$name")"
    if ! is_daemon "$pid" "$name"; then
        continue
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + STOP_TIMEOUT ))
    while is_daemon "$pid" "$name" && [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.2
    done
    if is_daemon "$pid" "$name"; then
        log "$name (pid $pid) still alive after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while is_daemon "$pid" "$name"; do sleep 0.1; done
    fi
done
rm -f "$PIDS"
log "stopped"
