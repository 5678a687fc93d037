"""Benchmarks (not tests): workloads, the plain classroom loops they are compared with, and
the machinery for honest comparisons (interleaved in one process, quiet and with a busy
neighbour). The command line is `python workbook.py bench`, see `tooling.benchmark`."""
