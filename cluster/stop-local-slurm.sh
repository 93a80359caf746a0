#!/usr/bin/env bash
# cluster/stop-local-slurm.sh -- stop the Slurm started by cluster/start-local-slurm.sh.
# First cancels every job (slurmstepd would outlive slurmd), then signals only the PIDs recorded in
# STATE_DIR/pids, and only while /proc/PID/cmdline still names STATE_DIR (a reused PID is left alone).
# Never stops anything by name.
#
# Usage: cluster/stop-local-slurm.sh [STATE_DIR] [--wipe]     (default $LOCAL_SLURM_DIR or /tmp/cpframe-slurm)
#        --wipe   delete STATE_DIR afterwards
set -uo pipefail

STATE_DIR="${LOCAL_SLURM_DIR:-/tmp/cpframe-slurm}"
WIPE=0
for a in "$@"; do
  case "$a" in
    --wipe) WIPE=1 ;;
    *) STATE_DIR="$a" ;;
  esac
done
log() { printf '[cpframe-slurm] %s\n' "$*" >&2; }

[ -d "$STATE_DIR" ] || { log "no state dir $STATE_DIR; nothing to stop"; exit 0; }
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
CONF="$STATE_DIR/slurm.conf"
PIDS="$STATE_DIR/pids"

pid_is_ours() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE_DIR"
}

# 1. cancel remaining jobs so slurmd takes their slurmstepd/processes down
#    (slurmstepd outlives slurmd otherwise).
if pid_is_ours "$(cat "$PIDS/slurmctld.pid" 2>/dev/null)"; then
  jobs="$(SLURM_CONF="$CONF" squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')"
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 60); do
      [ -z "$(SLURM_CONF="$CONF" squeue -h -o '%i' 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

# 2. stop daemons: slurmd, slurmctld, then munged
rc=0
for d in slurmd slurmctld munged; do
  f="$PIDS/$d.pid"
  pid="$(cat "$f" 2>/dev/null || true)"
  if [ -z "$pid" ]; then continue; fi
  if ! pid_is_ours "$pid"; then
    log "$d (pid $pid) not running"; rm -f "$f"; continue
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do pid_is_ours "$pid" || break; sleep 0.1; done
  if pid_is_ours "$pid"; then
    log "$d (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null; sleep 0.5
  fi
  if pid_is_ours "$pid"; then log "$d (pid $pid) still alive!"; rc=1
  else log "$d (pid $pid) stopped"; rm -f "$f"; fi
done

if [ "$WIPE" -eq 1 ] && [ "$rc" -eq 0 ]; then
  rm -rf "$STATE_DIR" && log "wiped $STATE_DIR"
fi
exit $rc
