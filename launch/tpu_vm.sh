#!/bin/bash
# Data-parallel lstm_jax training on a Cloud TPU VM slice (one process per TPU
# host, all started by `gcloud ... ssh --worker=all`). JAX detects the TPU VM
# and its workers itself: jax.distributed.initialize() needs no arguments.
#
#   launch/tpu_vm.sh NAME ZONE setup                     # copy the repo, install
#   launch/tpu_vm.sh NAME ZONE train CONFIG WORKDIR [train flags...]
#   launch/tpu_vm.sh --dry-run NAME ZONE ...             # print the gcloud commands only
#
# e.g.  launch/tpu_vm.sh my-v4-32 us-central2-b train configs/dnd.py /mnt/nfs/workdirs/dnd
#
# WORKDIR must be a path every host sees (a Filestore/NFS mount, or a bucket
# mounted with gcsfuse): all hosts write their checkpoint shards there and
# process 0 writes config, tokenizer and metrics.
set -euo pipefail
DRY_RUN=0
if [[ "${1:-}" == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_vm.sh [--dry-run] NAME ZONE setup | train CONFIG WORKDIR [flags...]" >&2
  exit 2
fi
NAME=$1
ZONE=$2
ACTION=$3
shift 3
REMOTE_DIR=${REMOTE_DIR:-lstm_jax}  # relative to the remote home directory
HERE=$(cd "$(dirname "$0")/.." && pwd)
run() {  # the command, or with --dry-run one shell-quoted line of it
  if [[ ${DRY_RUN} == 1 ]]; then
    local line
    printf -v line '%q ' "$@"
    echo "${line% }"
  else
    "$@"
  fi
}
ssh_all() {
  run gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all --command="$1"
}

case "${ACTION}" in
  setup)
    run gcloud compute tpus tpu-vm scp --recurse --zone="${ZONE}" --worker=all \
      "${HERE}" "${NAME}:~/${REMOTE_DIR}"
    ssh_all "cd ~/${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    if [[ $# -lt 2 ]]; then
      echo "usage: launch/tpu_vm.sh NAME ZONE train CONFIG WORKDIR [flags...]" >&2
      exit 2
    fi
    CONFIG=$1
    WORKDIR=$2
    shift 2
    EXTRA=""
    if [[ $# -gt 0 ]]; then printf -v EXTRA ' %q' "$@"; fi
    ssh_all "cd ~/${REMOTE_DIR} && .venv/bin/python -m lstm_jax.train \
      --config $(printf %q "${CONFIG}") --workdir $(printf %q "${WORKDIR}")${EXTRA}"
    ;;
  *)
    echo "unknown action ${ACTION}; valid: setup, train" >&2
    exit 2
    ;;
esac
