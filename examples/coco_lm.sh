#!/bin/bash
# COCO-LM corrective pretraining (docs/coco_lm.md): a 4-layer generator corrupts 15 % of the tokens, the encoder
# learns to detect (copy head, λ_bin = 50) and correct them; SCL on. Base size at TP=2 on one node:
#   DATA=data/corpus TOKENIZER=data/spm.model bash examples/coco_lm.sh
# (DATA: tools/preprocess_data.py's output prefix; PRESET=tiny GENERATOR_LAYERS=1 for a CPU smoke run.)
source "$(dirname "$0")/launch.sh"
RUN_DIR=${RUN_DIR:-runs/coco_lm}
ARGS=(
  --objective coco-lm --model-preset "${PRESET:-base}"
  --generator-num-layers "${GENERATOR_LAYERS:-4}" --embedding-sharing plain --copy-loss-weight 50
  --scl --scl-loss-weight 1 --scl-crop-ratio 0.9 --scl-temperature 1 --mask-prob 0.15
  --tensor-model-parallel-size "${TP:-2}" --use-distributed-optimizer --bf16
  --seq-length 512 --micro-batch-size 8 --global-batch-size 2048
  --train-iters 125000 --lr 5e-4 --min-lr 1e-5 --lr-decay-style linear --lr-warmup-iters 10000
  --weight-decay 0.01 --clip-grad 2.0 --adam-beta1 0.9 --adam-beta2 0.98 --adam-eps 1e-6
  --data-path "${DATA:-data/corpus_text}" --tokenizer-model "${TOKENIZER:-data/spm.model}" --split 998,2,0
  --save "$RUN_DIR/checkpoints" --load "$RUN_DIR/checkpoints" --save-interval 1000
  --log-interval 10 --eval-interval 2000 --eval-iters 10 --tensorboard-dir "$RUN_DIR/tensorboard"
)
NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch pretrain_vega.py "${ARGS[@]}"
