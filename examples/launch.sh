# Sourced by the recipes: `launch SCRIPT.py ARGS...` starts SCRIPT on every GPU of every node of the job.
#   Under Slurm: one torchrun per node (srun), c10d rendezvous on the job's first node.
#   Outside Slurm: torchrun on this machine with NPROC_PER_NODE processes (default: all GPUs, else 1).
#   VEGA_DRY_RUN=1: no training; `SCRIPT.py ARGS... --dry-run` validates the layout for the world the job would
#   have (the test suite does this for every recipe, without a GPU).
set -euo pipefail
VEGA_ROOT=${VEGA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

gpus_per_node() {
  if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then echo "$SLURM_GPUS_ON_NODE"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | wc -l
  else echo 1; fi
}

launch() {
  local script="$1"; shift
  local nodes=${SLURM_JOB_NUM_NODES:-${NNODES:-1}}
  local per_node=${NPROC_PER_NODE:-$(gpus_per_node)}
  if [[ "${VEGA_DRY_RUN:-0}" == 1 ]]; then
    WORLD_SIZE=$((nodes * per_node)) python3 "$VEGA_ROOT/$script" "$@" --dry-run
    return
  fi
  # NCCL: fail fast on a broken collective instead of hanging until the job's time limit.
  export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1 CUDA_DEVICE_MAX_CONNECTIONS=1
  export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22} OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    local head_node
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes "$nodes" --nproc_per_node "$per_node" \
      --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:${MASTER_PORT:-29500}" \
      "$VEGA_ROOT/$script" "$@" &
    wait_for_step $!
  else
    # One machine: a rendezvous port of its own unless MASTER_PORT names one (a fixed default port collides
    # with a launch still closing, or with a second job on the node).
    local rendezvous=(--standalone)
    [[ -n "${MASTER_PORT:-}" ]] && rendezvous=(--master_port "$MASTER_PORT")
    torchrun --nnodes "$nodes" --nproc_per_node "$per_node" "${rendezvous[@]}" "$VEGA_ROOT/$script" "$@"
  fi
}

# Preemption: sbatch --signal=B:USR1@300 wakes the batch shell 5 minutes before the time limit; the training
# ranks get SIGTERM, save a checkpoint and exit cleanly, and the job is requeued. The requeued job resumes from
# the same directory (--load = --save).
wait_for_step() {
  local step_pid="$1"
  trap 'echo "USR1: checkpointing and requeueing"; kill -TERM "$step_pid"; wait "$step_pid"; scontrol requeue "$SLURM_JOB_ID"; exit 0' USR1
  wait "$step_pid"
}
