#!/usr/bin/env bash
# Start, stop or restart a real single-node SLURM cluster (with accounting) on this machine, for kdbench's tests.
#
#   tests/slurm/cluster.sh start      install the Debian packages if missing, write configs, start every daemon
#   tests/slurm/cluster.sh stop       stop every daemon (by PID file); safe to call when nothing runs
#   tests/slurm/cluster.sh restart-controller   kill and restart slurmctld and slurmd (jobs must survive)
#   tests/slurm/cluster.sh status     exit 0 when the cluster answers, 1 otherwise
#
# Needs root (daemons run as their own users). Every wait is bounded; on a failure the daemon logs' tails are
# printed. submitit reads job states only through sacct, so slurmdbd + MariaDB are started too: without
# accounting a cancelled job would stay UNKNOWN forever. Idempotent: `start` on a running cluster does nothing.
set -euo pipefail

STATE=${KDBENCH_SLURM_DIR:-/tmp/kdbench-slurm}
NODE=$(hostname -s)
CPUS=${KDBENCH_SLURM_CPUS:-8}          # advertised (config_overrides): sleep-heavy tests run side by side
MEM_MB=${KDBENCH_SLURM_MEM_MB:-16000}
DB_PASS=kdbench-test
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

log() { echo "[slurm-cluster] $*" >&2; }

tails() {
  for f in "$STATE"/log/*.log /var/log/munge/munged.log; do
    [ -f "$f" ] || continue
    echo "----- tail of $f" >&2
    tail -n 25 "$f" >&2
  done
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${limit}s waiting for $what"
      tails
      return 1
    fi
    sleep 0.5
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           "${missing[@]}" >/dev/null; }
  fi
}

write_configs() {
  mkdir -p "$STATE"/{log,run,ctld,spool} /etc/slurm /run/munge /run/mysqld
  chown slurm:slurm "$STATE"/ctld "$STATE"/log "$STATE"/run
  chmod 0777 "$STATE"/log
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
  cat > /etc/slurm/slurm.conf <<EOF
# written by kdbench tests/slurm/cluster.sh
ClusterName=kdbench
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherParams=OverMemoryKill
JobAcctGatherFrequency=task=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((MEM_MB / CPUS))
SchedulerParameters=bf_interval=5,sched_interval=5
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
JobRequeue=1
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/slurmdbd.conf <<EOF
# written by kdbench tests/slurm/cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 0600 /etc/slurm/slurmdbd.conf
}

start_munge() {
  # munged insists on its own paths and owners (/run/munge, /var/log/munge), so it keeps its defaults
  if ! pid_alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged --force 2>>"$STATE/log/munged-start.log" || true
  fi
  wait_for 15 munged bash -c "munge -n | unmunge"
}

start_mariadb() {
  if ! pid_alive /run/mysqld/kdbench-mariadb.pid; then
    setsid /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/kdbench-mariadb.pid \
      --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
  fi
  wait_for 30 mariadb mysqladmin ping
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_slurm_daemons() {
  pid_alive "$STATE/run/slurmdbd.pid" || /usr/sbin/slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  pid_alive "$STATE/run/slurmctld.pid" || /usr/sbin/slurmctld
  wait_for 30 slurmctld scontrol ping
  pid_alive "$STATE/run/slurmd.pid" || /usr/sbin/slurmd -N "$NODE"
  wait_for 60 "node $NODE to be idle" bash -c "sinfo -h -n $NODE -o %T | grep -Eq '^(idle|mixed|allocated)'"
}

stop_pidfile() {  # stop_pidfile FILE NAME
  local file=$1 name=$2
  pid_alive "$file" || return 0
  local pid
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  log "$name (pid $pid) ignored SIGTERM for 10 s; killing"
  kill -9 "$pid" 2>/dev/null || true
}

cluster_up() { scontrol ping >/dev/null 2>&1 && sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }

case "${1:-}" in
  start)
    [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
    if command -v sinfo >/dev/null && cluster_up && sacct -n -X -S now >/dev/null 2>&1; then
      log "already running"
      exit 0
    fi
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurm_daemons
    log "up: node $NODE, $CPUS CPUs advertised, state in $STATE"
    ;;
  stop)
    stop_pidfile "$STATE/run/slurmd.pid" slurmd
    stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
    stop_pidfile "$STATE/run/slurmdbd.pid" slurmdbd
    stop_pidfile /run/mysqld/kdbench-mariadb.pid mariadbd
    stop_pidfile /run/munge/munged.pid munged
    log "stopped"
    ;;
  restart-controller)
    stop_pidfile "$STATE/run/slurmd.pid" slurmd
    stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
    start_slurm_daemons
    log "slurmctld and slurmd restarted"
    ;;
  status)
    cluster_up
    ;;
  *)
    echo "usage: $0 start|stop|restart-controller|status" >&2
    exit 2
    ;;
esac
