#!/usr/bin/env bash
# Pretraining on several GPU nodes, one process per node (each process drives all of its
# node's GPUs; jax sees every GPU of every node as one mesh).
#
# Under SLURM (one task per node):
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 scripts/launch_gpu_nodes.sh \
#       --config configs/gpt2_124m.yaml mesh.data=4 mesh.fsdp=8
# By hand, on every node (node 0 first), with the same COORDINATOR:
#   COORDINATOR=node0:12355 NUM_PROCESSES=4 PROCESS_ID=<0..3> scripts/launch_gpu_nodes.sh --config ...
#
# Every process must see the same files at the same paths (config, data.path, out_dir):
# a shared filesystem. The data loader gives each process its own rows; orbax writes each
# process's shards of the checkpoint.
set -euo pipefail
if [ -n "${SLURM_JOB_ID:-}" ]; then
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  export MYLM_COORDINATOR="${head}:${MYLM_PORT:-12355}"
  export MYLM_NUM_PROCESSES="$SLURM_NTASKS"
  exec srun --kill-on-bad-exit=1 bash -c 'MYLM_PROCESS_ID=$SLURM_PROCID mylm pretrain "$@"' _ "$@"
fi
: "${COORDINATOR:?set COORDINATOR=host:port (node 0), NUM_PROCESSES and PROCESS_ID}"
export MYLM_COORDINATOR="$COORDINATOR" MYLM_NUM_PROCESSES="$NUM_PROCESSES" MYLM_PROCESS_ID="$PROCESS_ID"
exec mylm pretrain "$@"
