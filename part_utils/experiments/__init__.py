"""The experiments behind Parts 5 and 8's comparisons of SAE architectures: sweeps, evaluation rows,
tables and figures, and the results the text quotes. The notebooks call them in one line each;
the SAEs they train are the notebook's own, looked up through `part_utils.sae_registry`."""
