#!/usr/bin/env bash
# The main job on an embedded default, offline, on CPU: install; build a corpus from text Python itself ships;
# train a sentencepiece tokenizer; preprocess to a Megatron indexed dataset; pretrain the `tiny` encoder with
# tensor x pipeline parallelism (TP=2 x PP=2, four gloo processes); self-evolution stage 1 (mine the neglected
# tokens) and stage 2 (train on them with smoothed labels); fine-tune the stage-2 model on a SuperGLUE task at TP=2
# and write its leaderboard predictions (by default on an RTE-format sample the project builds from the same
# corpus; with --superglue-dir on a real task: <DIR>/<TASK>/{train,val,test}.jsonl as in the official download);
# export to Hugging Face and reload in transformers. Everything lands in a new run directory.
#   bash examples/quickstart.sh [--steps N] [--run-dir DIR] [--superglue-dir DIR [--superglue-task RTE]]
# VEGA_SKIP_INSTALL=1 skips the install step in an environment tools/install.sh has just set up (the test suite's:
# tools/run_tests.sh installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=60
run_dir="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
superglue_dir=""
task=RTE
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps) steps="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --superglue-dir) superglue_dir="$2"; shift 2 ;;
    --superglue-task) task="$2"; shift 2 ;;
    *) echo "error: unknown option $1 (use --steps N, --run-dir DIR, --superglue-dir DIR, --superglue-task TASK)" >&2
       exit 2 ;;
  esac
done
if [[ -e "$run_dir" ]]; then echo "error: $run_dir: already exists; choose another --run-dir" >&2; exit 2; fi
if [[ -n "$superglue_dir" ]]; then
  for split in train val test; do
    if [[ ! -f "$superglue_dir/$task/$split.jsonl" ]]; then
      echo "error: $superglue_dir/$task/$split.jsonl: not found (--superglue-dir holds <TASK>/{train,val,test}.jsonl)" \
        >&2
      exit 2
    fi
  done
elif [[ "$task" != RTE ]]; then
  echo "error: --superglue-task: the embedded sample is RTE; give --superglue-dir for $task" >&2; exit 2
fi

[[ -n "${VEGA_SKIP_INSTALL:-}" ]] || bash tools/install.sh
mkdir -p "$run_dir"
export OMP_NUM_THREADS=1   # four ranks share two cores
# Each launch picks a free rendezvous port itself unless MASTER_PORT names one (back-to-back launches on one
# fixed port can find it still held by the previous one).
RDZV=(--standalone)
[[ -n "${MASTER_PORT:-}" ]] && RDZV=(--master_port "$MASTER_PORT")
log() { echo "== $*"; }
start=$(date +%s)

log "1/8 embedded corpus (docstrings and help topics of the Python standard library)"
python3 -m megatron_vega.data.embedded_corpus --output "$run_dir/corpus.jsonl"

log "2/8 sentencepiece tokenizer (unigram, 1000 pieces)"
python3 tools/train_tokenizer.py --input "$run_dir/corpus.jsonl" --vocab-size 1000 --model-prefix "$run_dir/spm"

log "3/8 indexed dataset"
python3 tools/preprocess_data.py --input "$run_dir/corpus.jsonl" --output-prefix "$run_dir/corpus" \
  --tokenizer-model "$run_dir/spm.model" --workers 2

log "4/8 MLM pretraining of 'tiny' at TP=2 x PP=2"
torchrun --nproc_per_node 4 "${RDZV[@]}" pretrain_vega.py \
  --model-preset tiny --vocab-size 1000 \
  --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2 \
  --data-path "$run_dir/corpus" --tokenizer-model "$run_dir/spm.model" --split 98,2,0 \
  --seq-length 128 --micro-batch-size 8 --global-batch-size 32 \
  --train-iters "$steps" --lr 3e-3 --lr-warmup-iters 5 --lr-decay-style cosine --min-lr 3e-4 \
  --log-interval 10 --eval-interval "$steps" --eval-iters 2 \
  --save "$run_dir/checkpoints" --save-interval "$steps" --tensorboard-dir "$run_dir/tensorboard" \
  2>&1 | tee "$run_dir/pretrain.log"

COMMON=(--model-preset tiny --vocab-size 1000 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2
        --data-path "$run_dir/corpus" --tokenizer-model "$run_dir/spm.model" --split 98,2,0 --seq-length 128)
# A model this small and this briefly trained neglects nearly every token (NLL > 0.1): keep each block's 15 %
# most neglected ones, so that stage 2 trains on a BERT-like share of masked positions.
log "5/8 self-evolution stage 1: mine the tokens the model neglects (NLL > 0.1 nats on the unmasked blocks)"
torchrun --nproc_per_node 4 "${RDZV[@]}" tools/self_questioning.py "${COMMON[@]}" \
  --micro-batch-size 16 --load "$run_dir/checkpoints" --output "$run_dir/neglected.nidx" --threshold 0.1 --max-ratio 0.15 \
  2>&1 | tee "$run_dir/stage1.log"

se_steps=$(( steps / 3 > 5 ? steps / 3 : 5 ))
se_warmup=$(( se_steps / 10 > 1 ? se_steps / 10 : 1 ))
# Stage 2 is continued training of a trained model: the SE4PLMs recipe's learning rate (1e-5, a tenth of the steps
# warming up, then linear decay), far below pretraining's. Its validation uses the same batches and masking as
# the pretraining run's last one (same seed, batch size and --eval-iters), so the two losses compare directly.
log "6/8 self-evolution stage 2: $se_steps steps on the mined positions, smoothed labels (alpha 0.5), lr 1e-5"
torchrun --nproc_per_node 4 "${RDZV[@]}" pretrain_vega.py "${COMMON[@]}" \
  --objective self-evolution --neglected-tokens "$run_dir/neglected.nidx" --se-alpha 0.5 \
  --load "$run_dir/checkpoints" --finetune --micro-batch-size 8 --global-batch-size 32 \
  --train-iters "$se_steps" --lr 1e-5 --lr-warmup-iters "$se_warmup" --lr-decay-style linear --log-interval 5 \
  --eval-interval "$se_steps" --eval-iters 2 --save "$run_dir/se-checkpoints" 2>&1 | tee "$run_dir/stage2.log"

ft_epochs=3
if [[ -n "$superglue_dir" ]]; then
  data_dir="$superglue_dir" source="$superglue_dir"
  # A real training set can be large: the first 1024 records keep this step short (dev and test stay whole, so
  # the predictions file is a complete leaderboard file).
  limit=(--max-train-examples 1024)
else
  data_dir="$run_dir/superglue" source="the embedded sample" limit=()
fi
log "7/8 SuperGLUE $task fine-tuning at TP=2 from the stage-2 model, on $source ($ft_epochs epochs)"
if [[ -z "$superglue_dir" ]]; then
  python3 -m megatron_vega.superglue.embedded_sample --corpus "$run_dir/corpus.jsonl" --output-dir "$data_dir"
fi
torchrun --nproc_per_node 2 "${RDZV[@]}" finetune_superglue.py \
  --task "$task" --data-dir "$data_dir" "${limit[@]}" --load "$run_dir/se-checkpoints" \
  --tensor-model-parallel-size 2 --seq-length 128 --micro-batch-size 16 --epochs "$ft_epochs" --lr 1e-3 \
  --log-interval 16 --predict "$run_dir/predictions" 2>&1 | tee "$run_dir/finetune.log"

log "8/8 export to Hugging Face and reload in transformers"
python3 tools/convert_checkpoint.py to-hf --load "$run_dir/se-checkpoints" --out "$run_dir/hf" \
  --tokenizer-model "$run_dir/spm.model" --verify | tee "$run_dir/convert.log"
python3 - "$run_dir/hf" <<'PY' | tee "$run_dir/reload.log"
import sys
import torch
from transformers import DebertaV2ForMaskedLM, DebertaV2Tokenizer
path = sys.argv[1]
model, info = DebertaV2ForMaskedLM.from_pretrained(path, output_loading_info=True)
tokenizer = DebertaV2Tokenizer.from_pretrained(path)
assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
text = "Return the [MASK] of the list."
inputs = tokenizer(text, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
where = (inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]
guess = tokenizer.decode(logits[0, where].topk(5).indices)
print(f"transformers reloaded {path}: {sum(p.numel() for p in model.parameters()):,} parameters, no missing or "
      f"unexpected keys; top-5 fill-ins for {text!r}: {guess}")
PY

first=$(grep -m1 -o '| loss [0-9][0-9.]*' "$run_dir/pretrain.log" | awk '{print $3}')
last=$(grep -o '| loss [0-9][0-9.]*' "$run_dir/pretrain.log" | tail -1 | awk '{print $3}')
echo
echo "== summary ($(( $(date +%s) - start )) s): run directory $run_dir"
echo "   MLM pretraining (TP=2 x PP=2, $steps steps): loss $first -> $last"
echo "   $(grep -m1 '^stage 1:' "$run_dir/stage1.log")"
validation() { grep -o 'validation at iteration [0-9]*: lm loss [0-9.]*' "$1" | tail -1 | awk '{print $NF}'; }
echo "   self-evolution stage 2 ($se_steps steps): $(grep -o '| loss [0-9][0-9.]*' "$run_dir/stage2.log" | tail -1 \
  | awk '{print "NLL " $3}') on the mined positions; validation MLM loss $(validation "$run_dir/pretrain.log") before," \
  "$(validation "$run_dir/stage2.log") after"
python3 - "$run_dir/finetune.log" "$source" <<'PY'
import json, sys
summary = [json.loads(line) for line in open(sys.argv[1]) if line.startswith('{"task"')][-1]
dev = ", ".join(f"{k} {v:.3f}" for k, v in summary["dev"].items())
files = "; ".join(f"{p} ({sum(1 for _ in open(p))} lines)" for p in summary["predictions"])
print(f"   SuperGLUE {summary['task']} fine-tuning ({sys.argv[2]}, TP=2, {summary['seconds']} s): dev {dev} "
      f"(best epoch {summary['epoch']}); predictions {files}")
PY
echo "   $(grep verify "$run_dir/convert.log")"
echo "   $(tail -1 "$run_dir/reload.log")"
