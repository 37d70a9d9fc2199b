"""Pretrain a Vega encoder: `torchrun --nproc_per_node N pretrain_vega.py [Megatron flags]`, with the
--objective of choice (MLM, self-evolution, any registered one: megatron_vega/objectives/).

Tensor, pipeline (1F1B / interleaved) and data parallelism on megatron-core; bf16 / fp16; dist checkpoints that
reshard and resume; --mock-data trains without files, --dry-run checks a layout for any WORLD_SIZE.
"""
from megatron_vega.errors import exit_on_input_error


def main(argv=None) -> None:
    # Imported here, not at the top: dist_checkpointing's first save starts a spawn-context helper process, which
    # imports this file again; a top-level import of megatron-core would cost it seconds per rank.
    from megatron_vega.config import world_size
    from megatron_vega.objectives.arguments import build_objective, build_parser, run_config

    args = build_parser(__doc__).parse_args(argv)
    with exit_on_input_error():
        run = run_config(args)
        run.data.validate()
        if args.dry_run:
            from megatron_vega.training.dry_run import dry_run
            objective = build_objective(run)
            dry_run(run, world_size(), objective.flops_per_token(), objective.further_models())
            return
        from megatron_vega.objectives.pretrain import pretrain
        pretrain(run)


if __name__ == "__main__":  # the guard matters: dist_checkpointing starts spawn-context helper processes
    main()
