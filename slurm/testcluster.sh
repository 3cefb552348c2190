#!/usr/bin/env bash
# A single-node SLURM cluster built from Debian's packages, for wconv's tests and the README's local walk-through:
# munged, MariaDB, slurmdbd (accounting: submitit reads job states through sacct), slurmctld and slurmd with four
# fake GPUs. Everything it writes lives under $WCONV_SLURM_DIR (default /tmp/wconv-slurm; keep it short: Unix
# socket paths must stay under 108 bytes). Needs root: slurmd and munged must run as root and munge.
#
#   slurm/testcluster.sh up       start what is not running (idempotent); resumes a drained node
#   slurm/testcluster.sh down     cancel all jobs, stop every daemon (state and accounting are kept)
#   slurm/testcluster.sh status   one line per daemon and the node's state; exit 0 only when all are up
#   slurm/testcluster.sh env      print the cluster's facts as `export NAME=value` lines (SLURM_CONF, partition, …)
#   slurm/testcluster.sh purge    down, then delete the whole folder
set -euo pipefail

DIR=${WCONV_SLURM_DIR:-/tmp/wconv-slurm}
DB_PORT=${WCONV_SLURM_DB_PORT:-16819}       # MariaDB on 127.0.0.1 only; slurmctld/slurmd/slurmdbd use SLURM's ports
CLUSTER=wconv
PARTITION=debug
ACCOUNT=wconv
DEBUG_QOS=dbg                                # mirrors Leonardo's boost_qos_dbg: 30 minutes at most
GPUS=4
NODE=$(hostname -s)
CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
DB_SOCKET=$DIR/mysql/mysqld.sock
export SLURM_CONF=$CONF                      # clients and daemons find slurmdbd.conf and gres.conf beside it
# Each daemon writes its pid file as its own user, into a folder that user owns.
declare -A PIDFILE=(
    [munged]=$DIR/munge/munged.pid [mariadbd]=$DIR/mysql/mariadbd.pid
    [slurmdbd]=$DIR/run/slurmdbd.pid [slurmctld]=$DIR/run/slurmctld.pid [slurmd]=$DIR/run/slurmd.pid
)

die() { echo "testcluster: $*" >&2; exit 2; }
log() { echo "testcluster: $*"; }

# --- process bookkeeping ------------------------------------------------------------------------------------

# pid_of DAEMON: its pid when its pid file names a live process of that program (a recycled pid is not ours).
# A zombie (exited, not yet reaped by an init that reaps late) counts as stopped.
pid_of() {
    local pid comm state
    read -r pid 2>/dev/null <"${PIDFILE[$1]}" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    read -r comm 2>/dev/null </proc/"$pid"/comm || return 1
    state=$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) || return 1
    [[ $comm == "$1" && $state != Z ]] || return 1
    echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

# stop DAEMON: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid i
    pid=$(pid_of "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        running "$1" || return 0
        sleep 0.1
    done
    log "$1 ($pid) ignored SIGTERM for 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for WHAT SECONDS COMMAND...: poll COMMAND (each try at most 5 s) until it succeeds or SECONDS pass.
wait_for() {
    local what=$1 deadline=$((SECONDS + $2))
    shift 2
    until timeout 5 "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up in time; see $DIR/log/"
        sleep 0.2
    done
}

# --- configuration ------------------------------------------------------------------------------------------

write_config() {
    mkdir -p "$DIR"/{etc,log,run,dev,state/ctld,state/d,munge,mysql}
    chmod 755 "$DIR"
    # Fake GPUs: SLURM 22.05 needs a device file per GPU (file-less GRES drains the node, one shared
    # File=/dev/null with Count=4 is fatal); symlinks to /dev/null pass its checks.
    local i
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$DIR/dev/nvidia$i"; done

    # The node line is the hardware slurmd detects (CPUs, sockets, cores, memory), so the node never goes INVAL.
    local hardware
    hardware=$(slurmd -C | head -n1 | sed 's/^NodeName=[^ ]* //')

    cat >"$CONF" <<EOF
# Written by slurm/testcluster.sh; rewritten on every 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire=10: a requeued job may start again after 10 s instead of the default 120 s.
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=${PIDFILE[slurmd]}
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No systemd or cgroup delegation in containers: track processes by parent id; bind tasks to their CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
JobRequeue=1
ReturnToService=2
MinJobAge=10
KillWait=5
InactiveLimit=0
SlurmdTimeout=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
# With slurmdbd, "Pass" names the munge socket for the slurmdbd connection (AuthInfo covers the rest).
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations,limits,qos
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 $hardware Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    echo "NodeName=$NODE Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]" >"$DIR/etc/gres.conf"

    # slurmdbd refuses a config that others can read (it holds the database password).
    (
        umask 077
        cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=${PIDFILE[slurmdbd]}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=wconv
StorageLoc=slurm_acct_db
EOF
    )

    # Plain `sbatch`/`sacct` in any shell, and submitit, read /etc/slurm/slurm.conf unless SLURM_CONF is set:
    # point it here unless a real cluster's file is already there.
    if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
        mkdir -p /etc/slurm
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    elif [[ $(readlink -f /etc/slurm/slurm.conf) != "$(readlink -f "$CONF")" ]]; then
        log "/etc/slurm/slurm.conf belongs to another cluster; use: export SLURM_CONF=$CONF"
    fi
}

# --- daemons, in dependency order ---------------------------------------------------------------------------

start_munge() {
    running munged && return 0
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
    fi
    touch "$DIR/log/munged.log"
    chown munge:munge "$DIR/log/munged.log"
    runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --log-file="$DIR/log/munged.log" --pid-file="${PIDFILE[munged]}" --seed-file="$DIR/munge/munged.seed" 9>&-
    wait_for munged 10 bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"
}

start_mariadb() {
    running mariadbd && return 0
    local data=$DIR/mysql/data
    if [[ ! -d $data/mysql ]]; then
        mariadb-install-db --no-defaults --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
    fi
    chown -R mysql:mysql "$DIR/mysql"
    touch "$DIR/log/mariadbd.log"
    chown mysql:mysql "$DIR/log/mariadbd.log"
    # mariadbd does not daemonize: setsid detaches it from the caller's session (pytest's process group).
    # slurmdbd wants innodb_lock_wait_timeout >= 900; a 32 MB buffer pool keeps it near 65 MB of memory.
    setsid mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$DB_SOCKET" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --pid-file="${PIDFILE[mariadbd]}" --log-error="$DIR/log/mariadbd.log" \
        --skip-name-resolve --innodb-buffer-pool-size=32M --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 9>&- &
    wait_for mariadbd 30 mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
    mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'wconv';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
    running slurmdbd && return 0
    slurmdbd 9>&-
    wait_for slurmdbd 30 sacctmgr -n show cluster
}

# The cluster, a debug QOS, the account and its users, once (sacctmgr -i: no confirmation prompt).
ensure_accounting() {
    [[ -n $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]] || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    # DenyOnLimit: sbatch refuses a job over the QOS's limits instead of queueing it forever.
    [[ -n $(sacctmgr -n -P show qos "$DEBUG_QOS" format=name) ]] ||
        sacctmgr -i add qos "$DEBUG_QOS" MaxWall=00:30:00 Flags=DenyOnLimit >/dev/null
    [[ $(sacctmgr -n -P show qos "$DEBUG_QOS" format=flags) == *DenyOnLimit* ]] ||
        sacctmgr -i modify qos "$DEBUG_QOS" set Flags=DenyOnLimit >/dev/null
    [[ -n $(sacctmgr -n -P show account "$ACCOUNT" format=account) ]] ||
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="wconv tests" Organization=wconv >/dev/null
    local user
    for user in root ${SUDO_USER:-} ${WCONV_SLURM_USERS:-}; do
        id "$user" >/dev/null 2>&1 || continue
        [[ -n $(sacctmgr -n -P show assoc where user="$user" account="$ACCOUNT" format=user) ]] && continue
        sacctmgr -i add user "$user" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
            QOS=normal,"$DEBUG_QOS" DefaultQOS=normal >/dev/null
    done
}

start_slurmctld() {
    running slurmctld && return 0
    slurmctld 9>&-
    wait_for slurmctld 30 bash -c "scontrol ping | grep -q UP"
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

start_slurmd() {
    running slurmd || slurmd -N "$NODE" 9>&-
    wait_for "node $NODE" 30 bash -c "sinfo -h -N -n '$NODE' -o %T | grep -qv -e unknown -e down -e 'not_responding'"
    # DRAIN survives restarts (e.g. after a GRES mistake); this cluster exists to run tests, so resume it.
    case $(node_state) in
        *drain* | *down* | *fail*) scontrol update NodeName="$NODE" State=RESUME ;;
    esac
    wait_for "node $NODE (idle)" 30 bash -c "sinfo -h -N -n '$NODE' -o %T | grep -Eq '^(idle|mixed|allocated|completing)$'"
}

up() {
    [[ $(id -u) -eq 0 ]] || die "run as root: slurmd and munged need it (e.g. sudo $0 up)"
    local missing=()
    for tool in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacctmgr; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]}; install the packages with scripts/system-packages.sh"
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    ensure_accounting
    start_slurmctld
    start_slurmd
    log "up: partition $PARTITION, account $ACCOUNT, node $NODE ($(node_state)), SLURM_CONF=$CONF"
}

down() {
    # Cancel jobs first: their slurmstepd processes outlive slurmd and would be orphaned.
    if running slurmctld; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ -n ${jobs// /} ]]; then
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            local i
            for ((i = 0; i < 100; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    local daemon
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do stop "$daemon"; done
    log "down"
}

status() {
    local ok=0 daemon pid
    for daemon in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(pid_of "$daemon"); then
            echo "$daemon: up (pid $pid)"
        else
            echo "$daemon: down"
            ok=3
        fi
    done
    [[ $ok -eq 0 ]] && echo "node $NODE: $(node_state)"
    return $ok
}

# One up/down at a time (two test sessions may start together). Daemons are started with 9>&- so that
# they do not inherit, and hold forever, the lock.
locked() {
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock 9
    "$@"
}

case ${1:-} in
    up) locked up ;;
    down) locked down ;;
    status) status ;;
    env)
        # The cluster's facts for shells (eval) and tests (tests/slurm_cluster.py), from this one place.
        printf 'export %s=%q\n' SLURM_CONF "$CONF" WCONV_SLURM_DIR "$DIR" WCONV_SLURM_CLUSTER "$CLUSTER" \
            WCONV_SLURM_PARTITION "$PARTITION" WCONV_SLURM_ACCOUNT "$ACCOUNT" WCONV_SLURM_DEBUG_QOS "$DEBUG_QOS" \
            WCONV_SLURM_NODE "$NODE" WCONV_SLURM_GPUS "$GPUS"
        ;;
    purge)
        locked down
        rm -rf "$DIR"
        ;;
    *) die "usage: $0 up|down|status|env|purge (state under \$WCONV_SLURM_DIR, now $DIR)" ;;
esac
