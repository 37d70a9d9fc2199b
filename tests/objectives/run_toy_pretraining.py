"""pretrain_vega.py's main with the toy objective registered first: what a user's own launcher looks like.

  torchrun --nproc_per_node N tests/objectives/run_toy_pretraining.py --objective toy [pretrain_vega.py flags]
"""
import importlib.util
from pathlib import Path


def pretrain_main():
    # Imported here, not at the top, as in pretrain_vega.py: dist_checkpointing's spawn helper re-imports this file.
    import toy_objective  # noqa: F401  (registers "toy"; this script's folder is first on sys.path)

    path = Path(__file__).resolve().parents[2] / "pretrain_vega.py"
    spec = importlib.util.spec_from_file_location("pretrain_vega", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


if __name__ == "__main__":  # the guard matters: dist_checkpointing starts spawn-context helper processes
    pretrain_main()()
