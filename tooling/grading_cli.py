"""`workbook.py progress` and `workbook.py grade DIR`: see tooling/grading/."""

import argparse
import os
import sys
from pathlib import Path

from tooling.grading.catalogue import ROOT, parts
from tooling.grading.choose import choose_parts
from tooling.grading.folder import grade_folder
from tooling.grading.report import progress_table
from tooling.grading.sandbox import sandbox_problem
from tooling.grading.session import grade_notebook


def progress(requested: list[str], time_limit: float) -> int:
    chosen = choose_parts(requested, parts())
    print(
        f"Running {len(chosen)} of your exercise notebooks in fast mode "
        "(each in a fresh Python, up to its last check)...",
        flush=True,
    )
    results = []
    for part in chosen:
        print(f"  running {part}...", flush=True)
        results.append(
            grade_notebook(ROOT / "notebooks" / f"{part}.ipynb", part, time_limit=time_limit, sandboxed=False)
        )
    print(progress_table(results))
    passed, total = sum(result.passed for result in results), sum(result.total for result in results)
    print(f"\nIn all: {passed} of {total} exercises pass.")
    return 0


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workbook.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    mine = commands.add_parser("progress", help="which of your exercises pass")
    mine.add_argument("parts", nargs="*", help="parts by number or name, e.g. 1 04 sae_variants (default: all)")
    mine.add_argument("--time-limit", type=float, default=600.0, help="seconds per notebook")
    marking = commands.add_parser("grade", help="grade a folder of submitted notebooks, each in a sandbox")
    marking.add_argument(
        "folder", type=Path, help="submissions: DIR/<learner>/NN_name.ipynb or DIR/<learner>_NN_name.ipynb"
    )
    marking.add_argument("--out", type=Path, help="where grades.csv and grades.md go (default: DIR/grades)")
    marking.add_argument("--time-limit", type=float, default=300.0, help="seconds per submission")
    marking.add_argument("--trusted", action="store_true", help="grade without a sandbox (only for code you trust)")
    args = parser.parse_args(arguments)
    os.environ["TQDM_DISABLE"] = "1"
    if args.command == "progress":
        return progress(args.parts, args.time_limit)
    if not args.folder.is_dir():
        parser.error(f"no folder {args.folder}")
    if not args.trusted:
        problem = sandbox_problem()
        if problem:
            print(
                f"Refusing to grade untrusted submissions without a sandbox: {problem}; "
                "pass --trusted only for code you trust."
            )
            return 2
    out = args.out or args.folder / "grades"
    isolation = "each without a sandbox (--trusted)" if args.trusted else "each in its own sandbox, no network"
    print(
        f"Grading the notebooks under {args.folder} (fast mode, {args.time_limit:.0f} s each, {isolation}):", flush=True
    )
    grade_folder(args.folder, out, time_limit=args.time_limit, sandboxed=not args.trusted)
    print(f"wrote {out / 'grades.csv'} and {out / 'grades.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
