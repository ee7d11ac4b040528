#!/usr/bin/env bash
# A private, single-node SLURM cluster for tests: munged + slurmctld + slurmd, all state
# under DIR, on ports of their own, so it never touches a system SLURM or munge.
#
#   tests/slurm/cluster.sh start  DIR   install if missing, start, wait for the node to be idle
#   tests/slurm/cluster.sh stop   DIR   cancel our jobs, stop the daemons by PID (pid files in DIR)
#   tests/slurm/cluster.sh status DIR   daemons alive and `sinfo`; exit 0 if the cluster is up
#   tests/slurm/cluster.sh env    DIR   print `export SLURM_CONF=...` for a shell
#
# Clients only need SLURM_CONF=DIR/slurm.conf: the munge socket is named in its AuthInfo.
#
# Exit codes: 0 ok; 1 status: not running; 2 usage; 3 SLURM/munge missing and cannot be
# installed (no apt-get, not root, or apt failed): callers skip SLURM tests on 3;
# 4 a daemon did not start or the node never became idle (logs printed); 5 environment
# problem (DIR path too long for the munge socket, no free port).
#
# Environment: ALFLOW_SLURM_READY_TIMEOUT (s, default 60), ALFLOW_SLURM_PORTS="CTLD SLURMD"
# (default: two free ports picked at random), ALFLOW_SLURM_OVERSUBSCRIBE (jobs that may
# share a core, default 8: Parsl's three role blocks and a test job on a 2-core machine).
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)
BINS=(slurmctld slurmd sinfo sbatch squeue scancel sacct munged mungekey)

die() { local code=$1; shift; echo "cluster.sh: $*" >&2; exit "$code"; }

usage() { die 2 "usage: $0 start|stop|status|env DIR"; }

[[ $# -eq 2 ]] || usage
cmd=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)
CONF=$DIR/slurm.conf
MUNGE=$DIR/munge
SOCK=$MUNGE/munge.socket
export SLURM_CONF=$CONF
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, not always on a user's PATH

missing_bins() {
    local b out=()
    for b in "${BINS[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [[ -x /usr/sbin/$b ]] || out+=("$b")
    done
    echo "${out[*]:-}"
}

install_packages() {
    local missing
    missing=$(missing_bins)
    [[ -z $missing ]] && return 0
    command -v apt-get >/dev/null 2>&1 \
        || die 3 "SLURM is not installed (missing: $missing) and apt-get is not available to install it"
    [[ $(id -u) -eq 0 ]] \
        || die 3 "SLURM is not installed (missing: $missing) and installing it needs root"
    echo "cluster.sh: installing ${PKGS[*]} (missing: $missing)" >&2
    local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${PKGS[@]}")
    # The package lists may be absent (a slim image): update once, then install.
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$DIR/apt.log" 2>&1; then
        { apt-get -o DPkg::Lock::Timeout=300 update -qq \
            && DEBIAN_FRONTEND=noninteractive "${apt[@]}"; } >>"$DIR/apt.log" 2>&1 \
            || { tail -n 20 "$DIR/apt.log" >&2; die 3 "apt-get could not install ${PKGS[*]} (log: $DIR/apt.log)"; }
    fi
    missing=$(missing_bins)
    [[ -z $missing ]] || die 3 "installed ${PKGS[*]} but still missing: $missing"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {
    if [[ -n ${ALFLOW_SLURM_PORTS:-} ]]; then
        echo "$ALFLOW_SLURM_PORTS"
        return
    fi
    local i p
    for i in $(seq 50); do
        p=$((20000 + RANDOM % 20000))
        if port_free "$p" && port_free $((p + 1)); then
            echo "$p $((p + 1))"
            return
        fi
    done
    die 5 "no two free adjacent TCP ports found"
}

pid_of() { [[ -s $DIR/$1.pid ]] && cat "$DIR/$1.pid" || true; }

alive() {
    local pid
    pid=$(pid_of "$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

show_logs() {
    local f
    for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log "$MUNGE"/munged.log; do
        [[ -f $f ]] || continue
        echo "----- $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2
    done
}

node_state() { sinfo -h -N -n "$NODE" -o "%T" 2>/dev/null | head -n 1; }

write_conf() {
    local ports ctld_port slurmd_port node_line
    read -r ctld_port slurmd_port <<<"$(pick_ports)"
    # `slurmd -C` prints this host as SLURM sees it; drop its "UpTime=" line.
    node_line=$(slurmd -C | grep '^NodeName=')
    NODE=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node_line")
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF" <<EOF
# written by tests/slurm/cluster.sh: a private one-node cluster, everything under $DIR
ClusterName=alflowtest
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
ReturnToService=2
MailProg=/bin/true
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=1-00:00:00 State=UP OverSubscribe=FORCE:${ALFLOW_SLURM_OVERSUBSCRIBE:-8}
EOF
}

start() {
    if alive slurmctld && alive slurmd && alive munged; then
        echo "cluster.sh: already running in $DIR" >&2
        return 0
    fi
    stop_daemons quiet
    install_packages
    (( ${#SOCK} < 100 )) || die 5 "munge socket path too long (${#SOCK} > 99 chars): $SOCK; use a shorter DIR"

    # munge: a key of our own, munged on its own socket
    mkdir -p "$MUNGE"
    chmod 700 "$MUNGE"
    [[ -s $MUNGE/munge.key ]] || mungekey -c -k "$MUNGE/munge.key"
    chmod 600 "$MUNGE/munge.key"
    munged --force --socket="$SOCK" --key-file="$MUNGE/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$MUNGE/munged.log" \
        --seed-file="$MUNGE/munged.seed" \
        || { show_logs; die 4 "munged did not start"; }

    write_conf
    rm -f "$DIR/slurmctld.pid" "$DIR/slurmd.pid"
    slurmctld -i || { show_logs; die 4 "slurmctld did not start"; }
    slurmd || { show_logs; die 4 "slurmd did not start"; }

    local t0=$SECONDS limit=${ALFLOW_SLURM_READY_TIMEOUT:-60} state=""
    while (( SECONDS - t0 < limit )); do
        state=$(node_state)
        if [[ $state == idle* ]]; then
            echo "cluster.sh: node $NODE idle after $((SECONDS - t0)) s; export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "cluster.sh: node $NODE not idle after $limit s (state: ${state:-unknown})" >&2
    sinfo -N -l >&2 || true
    show_logs
    stop_daemons quiet
    exit 4
}

stop_pid() {  # name: TERM, wait up to 10 s, then KILL
    local pid i
    pid=$(pid_of "$1")
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$1.pid"
}

stop_daemons() {
    if [[ -f $CONF ]] && alive slurmctld; then
        # our cluster only (SLURM_CONF): cancel every job so no worker pool outlives it
        scancel --user="$(id -un)" 2>/dev/null || true
        local i
        for i in $(seq 40); do
            [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    stop_pid slurmd
    stop_pid slurmctld
    stop_pid munged
    [[ ${1:-} == quiet ]] || echo "cluster.sh: stopped the cluster in $DIR"
}

status() {
    local d up=0
    for d in munged slurmctld slurmd; do
        if alive "$d"; then echo "$d: running (pid $(pid_of "$d"))"; else echo "$d: not running"; up=1; fi
    done
    if (( up == 0 )); then
        sinfo || up=1
    fi
    return $up
}

case $cmd in
    start) start ;;
    stop) stop_daemons ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) usage ;;
esac
