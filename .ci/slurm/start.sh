#!/usr/bin/env bash
# Start a real one-node SLURM cluster (munged + slurmctld + slurmd) on this host,
# for CI and for the tests marked `slurm`. Needs root. Idempotent: rerun it at
# will; if the daemons already run with the same slurm.conf it only re-checks them.
#
#   bash .ci/slurm/start.sh          # install if needed, start, wait, trial job
#   bash .ci/slurm/stop.sh           # stop the daemons started here
#
# No systemd: the daemons are started directly, in the foreground of their own
# session (setsid), and their PIDs are written to $LN_SLURM_DIR/pids.
# Everything lives under $LN_SLURM_DIR (default /var/lib/langneurons-slurm):
#   slurm.conf copy, ctld/ (state), d/ (slurmd spool), log/*.log, jobcomp.log, pids
# The config itself must be /etc/slurm/slurm.conf so that every SLURM client
# (sbatch/squeue called by Snakemake) finds it without SLURM_CONF.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${LN_SLURM_DIR:-/var/lib/langneurons-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
PIDS="$STATE_DIR/pids"
MARKER="langneurons-ci-slurm"
START_TIMEOUT="${LN_SLURM_START_TIMEOUT:-90}"

log() { echo "[slurm/start] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
t0=$(date +%s)
# One start.sh at a time (e.g. CI script and a test fixture racing).
exec 9>/run/langneurons-slurm.lock
flock -w 900 9 || die "another start.sh holds /run/langneurons-slurm.lock"

# ---------------------------------------------------------------- install ---
need_install=0
for bin in slurmctld slurmd sbatch squeue sinfo munged mungekey; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_install=1
done
if [ "$need_install" -eq 1 ]; then
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    # Keep maintainer scripts from starting services (no systemd here; and we
    # start the daemons ourselves): a policy-rc.d that denies every start.
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    cleanup_policy() { [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d || true; }
    trap cleanup_policy EXIT
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        slurm-wlm munge >/dev/null
    cleanup_policy
    trap - EXIT
    log "installed in $(( $(date +%s) - t0 )) s"
fi
SLURMCTLD="$(command -v slurmctld || echo /usr/sbin/slurmctld)"
SLURMD="$(command -v slurmd || echo /usr/sbin/slurmd)"
MUNGED="$(command -v munged || echo /usr/sbin/munged)"

# ------------------------------------------------------------------ munge ---
# Debian's munge postinst normally creates the key; create one if it did not.
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# ------------------------------------------------------------- slurm.conf ---
HOST="$(hostname -s)"
[ -n "$HOST" ] || die "hostname -s is empty"
# slurmd and slurmctld find their own role by matching `hostname -s` against
# NodeName / SlurmctldHost; the address is given explicitly (loopback), so no
# DNS is needed. Still make the name resolvable: some client paths look it up.
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    log "adding '$HOST' to /etc/hosts (it did not resolve)"
    echo "127.0.0.1 $HOST  # $MARKER" >> /etc/hosts
fi
ADDR=127.0.0.1

NPROC="$(nproc)"
MEM_MB="$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)"
# A bit below the machine's memory: slurmd drains a node whose RealMemory is
# above what it measures; leave 5 % (at least 512 MB) for the OS and snakemake.
margin=$(( MEM_MB / 20 )); [ "$margin" -lt 512 ] && margin=512
REAL_MEMORY=$(( MEM_MB - margin ))
DEF_MEM_PER_CPU=$(( REAL_MEMORY / NPROC / 4 )); [ "$DEF_MEM_PER_CPU" -lt 256 ] && DEF_MEM_PER_CPU=256
# Socket/core/thread layout as slurmd measures it, so that slurmd's registration
# matches the config (a mismatch drains the node); CPUs = nproc.
TOPOLOGY="CPUs=$NPROC"
if hw="$("$SLURMD" -C 2>/dev/null | head -1)"; then
    hw_cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    layout="$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw" || true)"
    if [ "$hw_cpus" = "$NPROC" ] && [ -n "$layout" ]; then
        TOPOLOGY="CPUs=$NPROC $layout"
    fi
fi

mkdir -p "$STATE_DIR"/{ctld,d,log,run} /etc/slurm
touch "$STATE_DIR/jobcomp.log"
new_conf="$(sed -e "s|@HOST@|$HOST|g" -e "s|@ADDR@|$ADDR|g" \
    -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@TOPOLOGY@|$TOPOLOGY|g" \
    -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" -e "s|@DEF_MEM_PER_CPU@|$DEF_MEM_PER_CPU|g" \
    "$HERE/slurm.conf.template")"

new_gres="$(sed -e "s|@HOST@|$HOST|g" "$HERE/gres.conf.template")"

conf_changed=1
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new_conf" ] && [ -f "$GRES_CONF" ] && [ "$(cat "$GRES_CONF")" = "$new_gres" ]; then
    conf_changed=0
fi
if [ "$conf_changed" -eq 1 ]; then
    for file in "$CONF" "$GRES_CONF"; do
        if [ -f "$file" ] && ! grep -q "$MARKER" "$file"; then
            log "moving foreign $file to $file.orig"
            mv "$file" "$file.orig"
        fi
    done
    printf '%s\n' "$new_conf" > "$CONF"
    printf '%s\n' "$new_gres" > "$GRES_CONF"
    cp "$CONF" "$STATE_DIR/slurm.conf"
    log "wrote $CONF and $GRES_CONF"
fi
# Debian's slurm also reads cgroup.conf only for cgroup plugins (none here).

# ---------------------------------------------------------------- daemons ---
# pid_alive PID NAME: PID runs (not a zombie) and its command name is NAME
# (guards against PID reuse, and against a killed daemon not yet reaped).
pid_alive() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
        && ! awk '{ exit !($3 == "Z" || $3 == "X") }' "/proc/$1/stat" 2>/dev/null
}
recorded_pid() { [ -f "$PIDS" ] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" || true; }

all_running=1
for d in munged slurmctld slurmd; do
    pid_alive "$(recorded_pid "$d")" "$d" || all_running=0
done

if [ "$all_running" -eq 1 ] && [ "$conf_changed" -eq 0 ]; then
    log "daemons already running ($(tr '\n' ' ' < "$PIDS"))"
else
    if [ -f "$PIDS" ]; then
        log "stopping previous daemons"
        bash "$HERE/stop.sh"
    fi
    : > "$PIDS"
    # Each daemon in the foreground (-F/-D) of its own session, so that $! is
    # the daemon itself and it outlives this script's process group; 9>&- keeps
    # the start lock out of the daemons.
    setsid setpriv --reuid=munge --regid=munge --init-groups \
        "$MUNGED" -F >>"$STATE_DIR/log/munged.out" 2>&1 < /dev/null 9>&- &
    echo "munged $!" >> "$PIDS"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see $STATE_DIR/log/munged.out)"

    # -c: cold start, forget jobs of an earlier run of this cluster. After an
    # unclean end (CI kills what a session left running) the saved state can
    # hold a job as RUNNING that finished, and it would hold CPUs and memory.
    setsid "$SLURMCTLD" -D -c -i >>"$STATE_DIR/log/slurmctld.out" 2>&1 < /dev/null 9>&- &
    echo "slurmctld $!" >> "$PIDS"
    for _ in $(seq 100); do
        scontrol ping 2>/dev/null | grep -q 'is UP' && break
        sleep 0.2
    done
    setsid "$SLURMD" -D -N "$HOST" >>"$STATE_DIR/log/slurmd.out" 2>&1 < /dev/null 9>&- &
    echo "slurmd $!" >> "$PIDS"
    log "started: $(tr '\n' ' ' < "$PIDS")"
fi

# ------------------------------------------------------------------ ready ---
node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -1 || true; }
state=""
deadline=$(( $(date +%s) + START_TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|*drain|fail*)
            # e.g. left DOWN by an earlier run: bring it back.
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    for d in munged slurmctld slurmd; do
        pid_alive "$(recorded_pid "$d")" "$d" || die "$d died (see $STATE_DIR/log/)"
    done
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) sinfo -N -l >&2 || true; scontrol show node "$HOST" >&2 || true
       die "node $HOST not ready after ${START_TIMEOUT}s (state '$state'); logs in $STATE_DIR/log/" ;;
esac

# Trial jobs: one interactive step and one batch job, both must succeed.
out="$(timeout 60 srun -N1 -n1 -t 1 --mem=100 hostname)" || die "trial srun failed"
[ "$out" = "$(hostname)" ] || [ "$out" = "$HOST" ] || die "trial srun printed '$out'"
# (own polling instead of `sbatch --wait`, which sleeps in growing steps of seconds)
jobid="$(sbatch --parsable -t 1 --mem=100 -J ln-slurm-trial -o /dev/null --wrap true)" \
    && [ -n "$jobid" ] || die "trial sbatch failed"
jstate=""
for _ in $(seq 300); do
    jstate="$(squeue -h -j "$jobid" -t all -o %T 2>/dev/null || true)"
    case "$jstate" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL) break ;; esac
    sleep 0.2
done
[ "$jstate" = COMPLETED ] || die "trial batch job $jobid ended as '$jstate'"

log "ready: node $HOST $(node_state), $NPROC CPUs, RealMemory=$REAL_MEMORY MB; took $(( $(date +%s) - t0 )) s"
