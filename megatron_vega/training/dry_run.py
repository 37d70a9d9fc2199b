"""--dry-run: validate a layout for any world size in one process and print what it costs."""
from megatron_vega.data.sampler import check_batch_sizes, check_interleaved_microbatches
from megatron_vega.errors import VegaInputError
from megatron_vega.model.parameter_count import count_parameters
from megatron_vega.training.flops import memory_per_rank, params_per_rank, train_flops_per_token


def dry_run(run, world: int, flops_per_token: float | None = None, further_models=()) -> dict:
    """Raise VegaInputError (naming the flag) for an impossible layout; return and print the plan.
    ``flops_per_token``: the objective's model FLOPs per trained token (default: MLM's). ``further_models``: the
    objective's models beyond the main one as (name, config, reads the main model's word table), counted in the
    parameter and memory lines (objectives/base.py, ``further_models``)."""
    model, par, tr, data = run.model, run.parallel, run.train, run.data
    dp = par.validate(model, world)
    gbs = tr.global_batch_size or tr.micro_batch_size * dp
    check_batch_sizes(gbs, tr.micro_batch_size, dp)
    if par.num_layers_per_virtual_pipeline_stage is not None:
        check_interleaved_microbatches(gbs, tr.micro_batch_size, dp, par.pipeline_model_parallel_size)
    if par.sequence_parallel and data.seq_length % par.tensor_model_parallel_size:
        raise VegaInputError("--seq-length", "must divide by the tensor-parallel size with --sequence-parallel")
    params = count_parameters(model)
    micro_batches = gbs // (tr.micro_batch_size * dp)
    memory = memory_per_rank(model, par, data.seq_length, tr.micro_batch_size, dp, tr.precision,
                             micro_batches=micro_batches, predicted_fraction=data.mask_prob)
    parts = []
    for name, cfg, shares_table in further_models:
        more = memory_per_rank(cfg, par, data.seq_length, tr.micro_batch_size, dp, tr.precision,
                               micro_batches=micro_batches, predicted_fraction=data.mask_prob)
        table = cfg.vocab_size * cfg.hidden_size if shares_table else 0
        table_share = cfg.padded_vocab_size * cfg.hidden_size // par.tensor_model_parallel_size if shares_table else 0
        held = params_per_rank(cfg, par)
        for key in ("weights", "gradients", "optimizer"):  # per parameter: scaled to the ones this model owns
            memory[key] += more[key] * (held - table_share) / held
        # the models' schedules run one after the other: activations of one model at a time
        memory["activations"] = max(memory["activations"], more["activations"])
        parts.append((name, count_parameters(cfg) - table))
    params += sum(n for _, n in parts)
    flops = flops_per_token or train_flops_per_token(model, data.seq_length, data.mask_prob,
                                                     micro_batch_size=tr.micro_batch_size)
    plan = {"world": world, "tp": par.tensor_model_parallel_size, "pp": par.pipeline_model_parallel_size, "dp": dp,
            "global_batch": gbs, "micro_batches": micro_batches, "parameters": params,
            "memory_gib": {k: v / 2**30 for k, v in memory.items()}, "train_flops_per_token": flops}
    gib = plan["memory_gib"]
    print(f"layout: world {world} = TP {plan['tp']} x PP {plan['pp']} x DP {dp}; global batch {gbs} = "
          f"{plan['micro_batches']} micro-batches x {tr.micro_batch_size} x DP {dp}")
    print(f"parameters: {params:,} ({params / 1e9:.2f}B)"
          + "".join(f", of which {name} {n:,}" for name, n in parts))
    print("memory per rank (GiB, estimate): " + ", ".join(f"{k} {v:.2f}" for k, v in gib.items())
          + f", total {sum(gib.values()):.2f}")
    print(f"model FLOPs per token (training, objective {run.objective.objective}, MLM head at {data.mask_prob:.0%} "
          f"of positions): {flops / 1e9:.2f} GFLOP")
    return plan
