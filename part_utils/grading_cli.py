"""`workbook.py progress` and `workbook.py grade DIR`: see part_utils/grading.py."""

import argparse
import os
import sys
from pathlib import Path

from part_utils.grading import ROOT, grade_folder, grade_notebook, progress_table


def progress(parts: list[str], time_limit: float) -> int:
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    chosen = [path for path in notebooks if not parts or path.stem[:2] in parts]
    print(f"Running {len(chosen)} of your exercise notebooks in fast mode (each in a fresh kernel, up to its last check)...", flush=True)
    results = []
    for path in chosen:
        results.append(grade_notebook(path, path.stem, time_limit=time_limit))
        print(progress_table(results[-1:]), flush=True)
    total = sum(len(result.verdicts) for result in results)
    print(f"\nIn all: {sum(result.passed for result in results)} of {total} exercises pass.")
    return 0


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workbook.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    mine = commands.add_parser("progress", help="which of your exercises pass")
    mine.add_argument("parts", nargs="*", help="notebook numbers, e.g. 01 04 (default: all)")
    mine.add_argument("--time-limit", type=float, default=600.0, help="seconds per notebook")
    marking = commands.add_parser("grade", help="grade a folder of submitted notebooks")
    marking.add_argument("folder", type=Path, help="submissions: DIR/<learner>/NN_name.ipynb or DIR/<learner>_NN_name.ipynb")
    marking.add_argument("--out", type=Path, help="where grades.csv and grades.md go (default: DIR)")
    marking.add_argument("--time-limit", type=float, default=300.0, help="seconds per submission")
    args = parser.parse_args(arguments)
    os.environ["TQDM_DISABLE"] = "1"
    if args.command == "progress":
        return progress(args.parts, args.time_limit)
    if not args.folder.is_dir():
        parser.error(f"no folder {args.folder}")
    out = args.out or args.folder
    print(f"Grading the notebooks under {args.folder} (fast mode, {args.time_limit:.0f} s each, no network):", flush=True)
    grade_folder(args.folder, out, time_limit=args.time_limit)
    print(f"wrote {out / 'grades.csv'} and {out / 'grades.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
