#!/bin/bash
# GLM blank-infilling pretraining of the base-size encoder (docs/glm_and_cloze.md), GLM-Base's settings: token-level
# spans only (Poisson(3) lengths, 15 % of the text), seq 512, Adam (0.9, 0.98) eps 1e-6, weight decay 0.1,
# clipping 1.0, lr 4e-4 with 5 % warm-up and cosine decay to 5 % of the peak over 120k of the 150k steps, 16
# sequences per GPU. GLM's [sop] [eop] [sMASK] [gMASK] take the last four ids of --vocab-size: give the tokenizer's
# id count + 4 (VOCAB_SIZE). Add --glm-token-prob 0.5 --glm-sentence-prob 0.3 for GLM-10B's objective mix.
#   DATA=data/corpus_text TOKENIZER=data/spm.model VOCAB_SIZE=128104 bash examples/pretrain_glm.sh [flags]
source "$(dirname "$0")/launch.sh"
RUN_DIR=${RUN_DIR:-runs/glm-base}
ARGS=(
  --objective glm --model-preset base --vocab-size "${VOCAB_SIZE:-128104}"
  --tensor-model-parallel-size 2 --use-distributed-optimizer --bf16
  --seq-length 512 --micro-batch-size 16 --global-batch-size 512
  --train-iters 150000 --lr 4e-4 --min-lr 2e-5 --lr-decay-style cosine --lr-decay-iters 120000
  --lr-warmup-fraction 0.05 --weight-decay 0.1 --clip-grad 1.0 --adam-beta1 0.9 --adam-beta2 0.98 --adam-eps 1e-6
  --glm-mask-ratio 0.15 --glm-span-lambda 3 --glm-token-prob 1.0
  --data-path "${DATA:-data/corpus_text}" --tokenizer-model "${TOKENIZER:-data/spm.model}"
  --save "$RUN_DIR/checkpoints" --load "$RUN_DIR/checkpoints" --save-interval 2000
  --log-interval 10 --eval-interval 2000 --tensorboard-dir "$RUN_DIR/tensorboard"
)
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch pretrain_vega.py "${ARGS[@]}" "$@"
