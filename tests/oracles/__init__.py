"""Independent implementations the checks and the test suite compare against (never the notebooks'
reference code, and never imported by the notebooks)."""
