"""Benchmarks (not tests): `python workbook.py bench [options]`.

Absolute times differ from machine to machine, so each speed claim is a ratio measured side by
side in one process, and the machine is printed first.

    --loops      the workbook's training loops against a plain classroom loop, interleaved,
                 at 1 and 2 threads, quiet and with one busy process beside them
    --threads    every kind of work at 1 and 2 threads and both OpenMP wait policies, quiet
                 and busy: the evidence behind part_utils/threads.py
    --notebooks  every solution notebook's wall time (full and fast mode; with --contended
                 also beside a busy process) and its slowest cell; --parts 01 04 selects
    --sae        Part 4's feature recovery for each resampling method and recipe
    --circuits   Part 7's Jacobian and sparse-decoding timings
Without options: --loops and --notebooks.
"""

import argparse
import os

from tooling.bench.machine import describe_machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", action="store_true")
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--notebooks", action="store_true")
    parser.add_argument(
        "--contended", action="store_true", help="with --notebooks: also time each notebook beside a busy process"
    )
    parser.add_argument("--skip-full", action="store_true", help="with --notebooks: fast mode only")
    parser.add_argument("--parts", nargs="*", help="notebook number prefixes, e.g. 01 04 (default: all)")
    parser.add_argument("--sae", action="store_true")
    parser.add_argument("--circuits", action="store_true")
    args = parser.parse_args()
    if not (args.loops or args.threads or args.notebooks or args.sae or args.circuits):
        args.loops = args.notebooks = True
    os.environ["TQDM_DISABLE"] = "1"
    print(f"Machine: {describe_machine()}")
    if args.loops:
        from tooling.bench.loops import print_loop_comparison

        print("\nTraining loops, side by side in this process (blocks of 500 steps, interleaved):")
        print_loop_comparison()
    if args.threads:
        from tooling.bench.threads import thread_table

        print("\nThroughput per kind of work (each setting in its own process):")
        thread_table()
    if args.sae:
        from tooling.bench.recovery import toy_sae_recovery

        toy_sae_recovery()
    if args.circuits:
        from tooling.bench.circuits import circuit_benchmarks

        circuit_benchmarks()
    if args.notebooks:
        from tooling.bench.notebooks import print_notebook_timings, solution_parts

        print("\nSolution notebooks, executed in a fresh kernel:")
        print_notebook_timings(solution_parts(args.parts), full=not args.skip_full, contended=args.contended)


if __name__ == "__main__":
    main()
