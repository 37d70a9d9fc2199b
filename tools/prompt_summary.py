"""One line per prompt file: task, origin (alone, transferred from, PANDA teacher and lambda), dev scores.

    python tools/prompt_summary.py runs/panda-cb/prompts/CB*.pt [--json]
"""
import argparse
import json
import sys
from pathlib import Path

from megatron_vega.errors import exit_on_input_error
from megatron_vega.prompt.store import read_prompt_file


def describe(path: str) -> dict:
    state = read_prompt_file(path)
    source = (state.get("transferred_from") or {}).get("task")
    panda = state.get("panda")
    origin = (f"PANDA from {panda.get('teacher_source')} teacher, lambda {panda['lambda']:.4f}" if panda
              else f"vanilla transfer from {source}" if source else "prompt tuning alone")
    return {"file": Path(path).name, "task": state["task"], "origin": origin, "dev": state.get("dev")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--json", action="store_true", help="One JSON object per line instead of the table.")
    args = parser.parse_args(argv)
    with exit_on_input_error():
        rows = [describe(f) for f in args.files]
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            dev = " ".join(f"{k} {v:.4f}" for k, v in (row["dev"] or {}).items())
            print(f"{row['file']:<22} {row['task']:<6} {row['origin']:<45} dev {dev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
