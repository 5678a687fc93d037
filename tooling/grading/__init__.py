"""Grading: which exercises of a notebook pass their checks, for a learner (`workbook.py progress`)
and for an instructor over a folder of untrusted submissions (`workbook.py grade DIR`).

A notebook's cells run in a worker process, inside a bubblewrap sandbox when grading others'
work (`sandbox.py`); the checks run in the grader's own process and call the learner's functions
across the boundary by value (`bridge.py`), so a verdict is computed where the submission cannot
reach it (`session.py`).
"""
