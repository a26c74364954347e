#!/usr/bin/env bash
# Launch moejax pretraining on every worker of a Cloud TPU VM pod slice.
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#
# e.g. scripts/launch_tpu_pod.sh my-v4-256 us-central2-b configs/st_moe_l_c4_pod.py \
#        gs://my-bucket/runs/st_moe_l
#
# Each worker checks out this commit of MOEJAX_REPO (a git URL; default: the
# origin of this checkout), installs it with the tpu extra and runs one
# training process. jax.distributed finds the
# coordinator on Cloud TPU by itself (--multihost). WORKDIR must be a place
# every host sees (a gs:// bucket, or a path all hosts mount) so all hosts
# share the checkpoints.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,14p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO=${MOEJAX_REPO:-$(git -C "$(dirname "$0")/.." remote get-url origin)}
COMMIT=$(git -C "$(dirname "$0")/.." rev-parse HEAD)
EXTRA=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  if [ ! -d moejax ]; then git clone $REPO moejax; fi
  cd moejax && git fetch -q origin && git checkout -q $COMMIT
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e '.[tpu]'
  python -m moejax.train --multihost --config=$CONFIG --workdir=$WORKDIR$EXTRA
"
