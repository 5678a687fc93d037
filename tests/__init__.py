"""Learner-facing checks (one module per part); under suite/, the workbook's own pytest suite; under
oracles/, independent implementations that checks and tests compare against."""
