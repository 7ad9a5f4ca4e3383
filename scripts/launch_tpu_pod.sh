#!/usr/bin/env bash
# Pretraining on a Cloud TPU pod slice: the same command on every host (worker) of the
# slice; jax.distributed finds the other hosts by itself (MYLM_DISTRIBUTED=auto).
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE --config configs/gpt2_124m.yaml mesh.fsdp=-1
#
# Assumes the repository is cloned at ~/mylm on every host and installed with
# `pip install -e ".[tpu]"`, and that data.path / train.out_dir are on storage every host
# can read and write (e.g. a mounted bucket).
set -euo pipefail
TPU=${1:?TPU name}; ZONE=${2:?zone}; shift 2
printf -v ARGS '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/mylm && MYLM_DISTRIBUTED=auto mylm pretrain $ARGS"
