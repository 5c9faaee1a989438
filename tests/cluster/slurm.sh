#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the cluster tests (Debian's slurmctld, slurmd and
# munge; root). The tests call it through the `slurm` fixture in tests/conftest.py.
#   tests/cluster/slurm.sh start    # install the packages if missing, configure, start the daemons
#   tests/cluster/slurm.sh stop     # stop the daemons this script started
#   tests/cluster/slurm.sh status   # sinfo
# One partition, "debug", with this machine as its only node and all of its CPUs. No accounting
# daemon (submitit logs a harmless warning that sacct is unavailable). Its config is
# $LMVISION_SLURM_DIR/slurm.conf (default /tmp/lmvision-slurm), never /etc/slurm: commands reach
# this cluster with SLURM_CONF set to that file (the script exports it for the daemons).
set -euo pipefail
DIR=${LMVISION_SLURM_DIR:-/tmp/lmvision-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

need_root() {
  [ "$(id -u)" = 0 ] || { echo "SLURM needs root to start here (uid $(id -u))" >&2; exit 3; }
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return
  command -v apt-get >/dev/null || { echo "no apt-get: install slurmctld, slurmd, slurm-client and munge" >&2; exit 3; }
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || head -c 1024 /dev/urandom > /etc/munge/munge.key
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    su -s /bin/sh munge -c /usr/sbin/munged
    for _ in $(seq 10); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.5; done
    echo "munged did not start" >&2; exit 1
  fi
}

write_conf() {
  local node cpus memory
  node=$(hostname -s)
  cpus=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
  memory=$(( $(awk '/^MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$(dirname "$CONF")"
  cat > "$CONF" <<SLURMCONF
ClusterName=lmvision-test
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
SLURMCONF
}

start() {
  need_root
  if [ -f "$CONF" ] && sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|alloc'; then sinfo; return; fi
  install_packages
  start_munge
  write_conf
  [ -f "$DIR/slurmctld.pid" ] && kill "$(cat "$DIR/slurmctld.pid")" 2>/dev/null || true
  [ -f "$DIR/slurmd.pid" ] && kill "$(cat "$DIR/slurmd.pid")" 2>/dev/null || true
  /usr/sbin/slurmctld -f "$CONF"
  /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed'; then sinfo; return; fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "SLURM did not come up; logs in $DIR/log" >&2
  exit 1
}

stop() {
  for daemon in slurmd slurmctld; do
    [ -f "$DIR/$daemon.pid" ] && kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null || true
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
