"""Learner-facing checks (one module per part) and, under suite/, the workbook's own pytest suite."""
