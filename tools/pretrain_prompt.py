"""PPT: pre-train a soft prompt on self-supervised data with the backbone frozen (docs/unimc_and_ppt.md, "PPT").

  torchrun --nproc_per_node N tools/pretrain_prompt.py --load CKPT --data-path PREFIX --ppt-task nsp3 \\
      --prompt-length 100 --lr 1e-2 --train-iters 1000 --save prompts/ppt_nsp3.pt [--tensor-model-parallel-size T]
  ... --text corpus.txt (plain text or JSONL instead of an indexed corpus) --ppt-task {nsp3,nss,unified,single}
  WORLD_SIZE=8 python tools/pretrain_prompt.py [same flags] --dry-run   # check the layout, read nothing

Prints the pseudo-label distributions, the held-out dev accuracy before and during training, and writes the
best-dev prompt as a prompt file (prompt/store.py's format, empty head) that finetune_superglue.py
--prompt-tuning --init-prompt FILE and tools/prompt_transferability.py read.
"""
import sys

from megatron_vega.config import world_size
from megatron_vega.errors import exit_on_input_error
from megatron_vega.ppt.config import parse_args


def main(argv=None) -> int:
    with exit_on_input_error():
        cfg = parse_args(sys.argv[1:] if argv is None else argv, __doc__)
        if cfg.dry_run:
            from megatron_vega.ppt.train import dry_run
            dry_run(cfg, world_size())
            return 0
        from megatron_vega.ppt.train import PromptPretrainer
        PromptPretrainer(cfg).run()
    return 0


if __name__ == "__main__":  # the guard matters: dist_checkpointing starts spawn-context helper processes
    sys.exit(main())
