#!/usr/bin/env bash
# cluster/start-local-slurm.sh -- cpframe's throw-away single-node Slurm (munged + slurmctld + slurmd)
# for tests and laptops: no systemd, no cgroups, everything under one short state directory.
# Installs slurm-wlm + munge with apt-get when they are missing (needs root; that is how CI gets them).
# Idempotent: if the daemons recorded in STATE_DIR are alive it only waits for the node to be idle.
#
# Usage:  sudo cluster/start-local-slurm.sh [STATE_DIR]        (default $LOCAL_SLURM_DIR or /tmp/cpframe-slurm)
# Then:   source STATE_DIR/env.sh      # exports SLURM_CONF, which sbatch/squeue/scancel (and dask-jobqueue) need
#         cpframe cluster check --site cluster/slurm-local.yaml
# Stop:   cluster/stop-local-slurm.sh STATE_DIR [--wipe]
#
# Environment knobs:
#   LOCAL_SLURM_CTLD_PORT / LOCAL_SLURM_D_PORT   slurmctld / slurmd ports (default 6817 / 6818)
#   LOCAL_SLURM_PARTITION   partition name (default debug; cluster/slurm-local.yaml uses it)
#   LOCAL_SLURM_CPUS        advertise this many CPUs (oversubscribe a 2-core machine)
#   LOCAL_SLURM_TIMEOUT     seconds to wait for the node to become idle (default 60)
#   LOCAL_SLURM_APT_RECOMMENDS=1   install with recommended packages
#
# Why it looks the way it does (each line of slurm.conf below was needed on these machines):
#  1. munged wants its socket directory 0755 and its key 0400 in a private 0700 directory;
#  2. the state dir path stays short: unix socket paths are limited to 107 bytes;
#  3. the node line comes from `slurmd -C` (a RealMemory above the real one drains the node);
#  4. DefMemPerCPU is set, else a job without --mem takes the whole node's memory;
#  5. addresses are explicit (SlurmctldHost=<host>(127.0.0.1), NodeAddr=127.0.0.1, slurmd -N <host>);
#  6. client commands need SLURM_CONF (written to STATE_DIR/env.sh);
#  7. linuxproc/none plugins (no cgroups, no accounting), cons_tres + CR_Core_Memory, SlurmUser=root,
#     ReturnToService=2;
#  8. dask-jobqueue needs interface='lo' and python=sys.executable (cluster/slurm-local.yaml);
#  9. stopping slurmd leaves running jobs behind: the stop script cancels jobs first;
# 10. with 2 cores only 2 single-core jobs run at once (LOCAL_SLURM_CPUS oversubscribes);
# 11. daemons are stopped only by the PIDs recorded here, never by name.
set -euo pipefail

STATE_DIR="${1:-${LOCAL_SLURM_DIR:-/tmp/cpframe-slurm}}"
CTLD_PORT="${LOCAL_SLURM_CTLD_PORT:-6817}"
D_PORT="${LOCAL_SLURM_D_PORT:-6818}"
PARTITION="${LOCAL_SLURM_PARTITION:-debug}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"

log() { printf '[cpframe-slurm] %s\n' "$*" >&2; }
STARTING=0
die() {
  log "ERROR: $*"
  # a failed start must not leave half a cluster behind: stop what we started
  [ "$STARTING" -eq 1 ] && stop_recorded
  exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" -eq 0 ] || die "must run as root: slurmd switches to the job owner, and apt-get installs the packages"

mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd -P)"
# unix socket paths (munge socket, slurmstepd sockets in the spool dir) are
# limited to 107 bytes; keep the state dir short.
[ "${#STATE_DIR}" -le 60 ] || die "state dir path too long (${#STATE_DIR} > 60 chars): $STATE_DIR"

CONF="$STATE_DIR/slurm.conf"
PIDS="$STATE_DIR/pids"          # PIDs recorded by this script (used by stop script)
MUNGE_SOCK="$STATE_DIR/munge-run/munge.socket.2"

# ---------------------------------------------------------------- 1. install
t_install=$(now)
need_install=0
for b in slurmctld slurmd sbatch sinfo munged munge; do
  command -v "$b" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" -eq 1 ]; then
  log "installing slurm-wlm + munge via apt-get"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' postinst from starting system daemons (no systemd here
  # anyway); only add a policy-rc.d if the image has none, and remove it after.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  rec="--no-install-recommends"
  [ "${LOCAL_SLURM_APT_RECOMMENDS:-0}" = 1 ] && rec=""
  set +e
  apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -q $rec slurm-wlm munge >"$STATE_DIR/apt-install.log" 2>&1
  rc=$?
  set -e
  [ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  [ "$rc" -eq 0 ] || { tail -20 "$STATE_DIR/apt-install.log" >&2; die "apt-get install failed"; }
  log "install took $(elapsed "$t_install") s"
else
  log "slurm + munge already installed"
fi

# --------------------------------------------------- helpers for PID tracking
# A recorded PID counts as "ours" only if it is alive AND its command line
# mentions our state dir (guards against PID reuse).
pid_is_ours() {
  local pid="$1"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE_DIR"
}
recorded_pid() { cat "$PIDS/$1.pid" 2>/dev/null || true; }
stop_recorded() { # SIGTERM (then SIGKILL) the daemons recorded in $PIDS, by PID only
  local d pid
  for d in slurmd slurmctld munged; do
    pid="$(recorded_pid "$d")"
    if pid_is_ours "$pid"; then
      log "stopping $d (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do pid_is_ours "$pid" || break; sleep 0.1; done
      pid_is_ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$d.pid"
  done
}

node_state() {
  SLURM_CONF="$CONF" sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1
}

NODE="$(hostname -s)"

write_env() {
  cat >"$STATE_DIR/env.sh" <<EOF
# source me: points Slurm client commands (sinfo/srun/sbatch/squeue/scancel,
# and therefore dask-jobqueue) at the local test cluster.
export SLURM_CONF="$CONF"
export LOCAL_SLURM_DIR="$STATE_DIR"
export LOCAL_SLURM_PARTITION="$PARTITION"
export LOCAL_SLURM_NODE="$NODE"
EOF
}

wait_idle() {
  local t0 st
  t0=$(now)
  for _ in $(seq 1 $((TIMEOUT * 4))); do
    st="$(node_state)"
    [ "$st" = "idle" ] && { log "node $NODE idle after $(elapsed "$t0") s of waiting"; return 0; }
    sleep 0.25
  done
  log "node state: '${st:-?}'"; SLURM_CONF="$CONF" sinfo -R >&2 || true
  tail -20 "$STATE_DIR/log/slurmctld.log" "$STATE_DIR/log/slurmd.log" >&2 || true
  die "node $NODE did not become idle within ${TIMEOUT}s"
}

# ----------------------------------------------------- already running?
all_up=1
for d in munged slurmctld slurmd; do pid_is_ours "$(recorded_pid $d)" || all_up=0; done
if [ "$all_up" -eq 1 ]; then
  log "already running (pids: $(cat "$PIDS"/*.pid | tr '\n' ' '))"
  write_env
  wait_idle
  exit 0
fi
# Partially running (e.g. one daemon crashed): stop the survivors, start afresh.
stop_recorded

t_start=$(now)

# --------------------------------------------------------- 2. ports free?
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$CTLD_PORT" "$D_PORT"; do
  port_in_use "$p" && die "port $p on 127.0.0.1 already in use (another slurm?); set LOCAL_SLURM_CTLD_PORT/LOCAL_SLURM_D_PORT"
done

# ------------------------------------------------------------ 3. dirs + key
mkdir -p "$STATE_DIR"/{munge,munge-run,log,ctld,spool,run,pids}
chmod 755 "$STATE_DIR" "$STATE_DIR/munge-run"  # munged: socket dir must be a+x
chmod 700 "$STATE_DIR/munge"                    # key dir private
chmod 755 "$STATE_DIR/log" "$STATE_DIR/ctld" "$STATE_DIR/spool" "$STATE_DIR/run"
if [ ! -s "$STATE_DIR/munge/munge.key" ]; then
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$STATE_DIR/munge/munge.key"
  else
    dd if=/dev/urandom of="$STATE_DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
fi
chown root:root "$STATE_DIR/munge/munge.key"
chmod 400 "$STATE_DIR/munge/munge.key"          # munged refuses group/other-readable keys

# --------------------------------------------------------------- 4. config
# Use the hardware description slurmd itself detects, otherwise slurmctld
# drains the node ("Low RealMemory") or rewrites the socket/core layout.
HW="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *UpTime=.*//')"
MEM="$(printf '%s\n' "$HW" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
NCPU="$(printf '%s\n' "$HW" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')"
EXTRA=""
if [ -n "${LOCAL_SLURM_CPUS:-}" ]; then
  NCPU="$LOCAL_SLURM_CPUS"
  HW="CPUs=$NCPU RealMemory=$MEM"
  EXTRA="SlurmdParameters=config_overrides"
fi
# Without a default, a job that gives no --mem is allocated the WHOLE node's
# memory (CR_Core_Memory), so plain sbatch/srun jobs would run one at a time.
DEFMEM=$(( MEM / NCPU ))
cat >"$CONF" <<EOF
# generated by cpframe cluster/start-local-slurm.sh -- single node, no cgroups, no systemd
ClusterName=cpframe
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEFMEM
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
MinJobAge=300
$EXTRA
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$CONF"

# ------------------------------------------------------------- 5. start
wait_for_file() { for _ in $(seq 1 100); do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }
record() { # name daemon_pidfile
  wait_for_file "$2" || die "$1 did not write $2 (see $STATE_DIR/log/$1.log)"
  local pid; pid="$(cat "$2")"
  pid_is_ours "$pid" || die "$1 (pid $pid) is not running (see $STATE_DIR/log/$1.log)"
  echo "$pid" >"$PIDS/$1.pid"
  log "$1 started, pid $pid"
}

rm -f "$STATE_DIR/run/"*.pid "$STATE_DIR/munge-run/"* "$PIDS/"*.pid
STARTING=1
munged --key-file="$STATE_DIR/munge/munge.key" --socket="$MUNGE_SOCK" \
       --pid-file="$STATE_DIR/munge-run/munged.pid" --log-file="$STATE_DIR/log/munged.log" \
       --seed-file="$STATE_DIR/munge/munged.seed" \
  || { tail -5 "$STATE_DIR/log/munged.log" >&2; die "munged failed to start"; }
record munged "$STATE_DIR/munge-run/munged.pid"
munge -n --socket="$MUNGE_SOCK" | unmunge --socket="$MUNGE_SOCK" >/dev/null \
  || die "munge credential round-trip failed"

# both daemonize themselves; -f points them at our config (not /etc/slurm)
slurmctld -f "$CONF" || die "slurmctld failed (see $STATE_DIR/log/slurmctld.log)"
record slurmctld "$STATE_DIR/run/slurmctld.pid"
slurmd -f "$CONF" -N "$NODE" || die "slurmd failed (see $STATE_DIR/log/slurmd.log)"
record slurmd "$STATE_DIR/run/slurmd.pid"

write_env
wait_idle
STARTING=0
log "started in $(elapsed "$t_start") s; now: source $STATE_DIR/env.sh"
