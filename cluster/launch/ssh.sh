#!/usr/bin/env bash
# Multi-machine training over plain SSH: one `accelerate launch` per machine, started from here.
#
#   cluster/launch/ssh.sh HOST[,HOST...] [ntire/train.py options]
#   cluster/launch/ssh.sh gpu1,gpu2 --config edsr_x2 --data /shared/DIV2K --output-dir /shared/runs/x2
#
# The first host is machine 0 and hosts the rendezvous (MAIN_ADDR:MAIN_PORT must be reachable from
# every host). Each host needs this repository at REMOTE_DIR with its environment, and the output
# folder on a filesystem every host shares. Each line of output is prefixed with its host; if one
# host fails, the others are stopped and the script exits with that host's status.
#
# Environment:
#   GPUS_PER_HOST      processes (GPUs) per host (default 8)
#   MAIN_ADDR          rendezvous address (default: the first host as given)
#   MAIN_PORT          rendezvous port (default 29500)
#   REMOTE_DIR         repository path on the hosts (default: this checkout's path)
#   REMOTE_SETUP       command run first on each host (default: activate REMOTE_DIR/.venv if present)
#   ACCELERATE_CONFIG  accelerate config file (default cluster/accelerate/multi_node.yaml; e.g. a
#                      DeepSpeed one from cluster/accelerate/)
#   SSH                the ssh command (default: ssh -o BatchMode=yes; add -tt so that a stopped
#                      launch also ends the remote processes)
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi

IFS=',' read -r -a HOSTS <<< "$1"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
NODES=${#HOSTS[@]}
GPUS=${GPUS_PER_HOST:-8}
MAIN_ADDR=${MAIN_ADDR:-${HOSTS[0]}}
MAIN_PORT=${MAIN_PORT:-29500}
REMOTE_DIR=${REMOTE_DIR:-$HERE}
REMOTE_SETUP=${REMOTE_SETUP:-'if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi'}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-cluster/accelerate/multi_node.yaml}
read -r -a SSH_CMD <<< "${SSH:-ssh -o BatchMode=yes}"

# Job control: each host's pipeline gets its own process group, so a failure stops all of it.
set -m

# The training options, quoted once for the remote shell.
TRAIN_ARGS=$(printf ' %q' "$@")

pids=()
for rank in "${!HOSTS[@]}"; do
    host=${HOSTS[$rank]}
    remote="cd $(printf %q "$REMOTE_DIR") && $REMOTE_SETUP && exec accelerate launch \
--config_file $(printf %q "$ACCELERATE_CONFIG") --num_machines $NODES --machine_rank $rank \
--num_processes $((NODES * GPUS)) --main_process_ip $(printf %q "$MAIN_ADDR") \
--main_process_port $MAIN_PORT ntire/train.py$TRAIN_ARGS"
    (
        set -o pipefail
        "${SSH_CMD[@]}" "$host" "$remote" 2>&1 | sed -u "s/^/[$host] /"
    ) &
    pids+=($!)
done

# Wait for all; at the first failure stop the others (their ssh sessions end with it).
status=0
remaining=${#pids[@]}
while (( remaining > 0 )); do
    if wait -n; then
        remaining=$((remaining - 1))
    else
        status=$?
        echo "ntire ssh launch: a host failed (exit $status); stopping the others" >&2
        for pid in "${pids[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
        break
    fi
done
wait || true
exit "$status"
