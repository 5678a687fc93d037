"""The workbook's build, test and grading tooling: progress and grading (`grading/`), benchmarks (`bench/`),
notebook execution and offline HTML export, the numbers in the prose (`claims`), section artefacts and what
the build writes for Colab. Run from the workbook's root by `workbook.py` and `notebook_build.py`; never
imported by the notebooks, whose helpers are in `part_utils/`."""
