"""The numbers Part 8's text quotes about its hierarchical data, computed from the data's config."""

from typing import Any

from part_utils.results import Results


def record_data_settings(cfg: Any, results: Results) -> float:
    """Record the data's probabilities and magnitudes and what follows from them; returns the expected number
    of active features per input."""
    expected_active = cfg.n_parents * cfg.parent_probability * (1 + cfg.child_probability)
    for name in ("parent_probability", "child_probability", "min_magnitude", "max_magnitude"):
        results.record(f"data.{name}", getattr(cfg, name))
    results.record("data.alone_probability", 1 - cfg.child_probability)
    results.record("data.child_marginal", cfg.parent_probability * cfg.child_probability / cfg.n_children)
    results.record("data.child_given_parent", cfg.child_probability / cfg.n_children)
    results.record("data.expected_active", expected_active)
    results.record("data.expected_children", cfg.n_parents * cfg.parent_probability * cfg.child_probability)
    results.record("data.l0_if_all_absorbed", cfg.n_parents * cfg.parent_probability)
    return expected_active
