#!/bin/bash
# UniMC (docs/unimc_and_ppt.md): train the encoder and its MLM head (no new parameter) on some SuperGLUE tasks
# read as multiple choice, then score held-out tasks zero-shot with the saved checkpoint.
# Stage 1: BoolQ + WiC + WSC + MultiRC (per answer) train splits mixed, BoolQ's dev selecting the epoch.
# Stage 2: zero-shot on CB, RTE and COPA, never seen in training: leaderboard files, and on the labelled val split
# (SPLIT=val, the default) the official metric. SPLIT=test writes the files to submit.
# Hyper-parameters: UniMC's fine-tuning defaults (lr 1e-5, weight decay 0.1, 1 % warm-up, linear decay, batch 16,
# seq 512) on vega-6b at TP 4 x DP 2; "yes" / "no" must be single pieces of the tokenizer (checked at start).
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/unimc_zero_shot.sh
# Extra flags go to stage 1 (e.g. --max-train-examples 1000); VEGA_DRY_RUN=1 only checks flags and layout.
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-unimc}
SUPERGLUE_DATA=${SUPERGLUE_DATA:-data/superglue}
SPLIT=${SPLIT:-val}
TRAIN=(
  --format unimc --task BoolQ --unimc-extra-tasks WiC WSC MultiRC --data-dir "$SUPERGLUE_DATA"
  --load "${PLM:-runs/vega6b-se/checkpoints}" --tokenizer-model "${TOKENIZER:-data/spm.model}"
  --tensor-model-parallel-size 4 --bf16 --seq-length 512 --micro-batch-size 8 --global-batch-size 16 --epochs 3
  --lr 1e-5 --lr-warmup-fraction 0.01 --weight-decay 0.1 --save "$RUN_DIR/checkpoints" --log-interval 10
)
# The checkpoint brings its tokenizer, yes / no words and mask.
ZERO_SHOT=(--data-dir "$SUPERGLUE_DATA" --split "$SPLIT" --load "$RUN_DIR/checkpoints" --tensor-model-parallel-size 4
           --seq-length 512 --micro-batch-size 16 --predict "$RUN_DIR/zero-shot-$SPLIT" --overwrite)
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${TRAIN[@]}" "$@"
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py zero-shot --task CB "${ZERO_SHOT[@]}"
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py zero-shot --task RTE "${ZERO_SHOT[@]}"
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py zero-shot --task COPA "${ZERO_SHOT[@]}"
