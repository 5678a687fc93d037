"""Shared helpers for the workbook: device, seeding, fast mode, training loops, plotting, checks."""
