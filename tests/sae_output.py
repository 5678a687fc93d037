"""What every SAE forward returns: checks shared by the parts whose exercises write one."""

from part_utils.sae_interface import SAEOutput
from tests.checking import CheckFailure


def require_named_fields(result: object, *, what: str = "forward") -> None:
    """Fail unless `result` is an `SAEOutput` (by its fields, so that a copy made by the grader counts too)."""
    if getattr(type(result), "_fields", None) != SAEOutput._fields:
        raise CheckFailure(
            f"Every value is right, but `{what}` returned a plain tuple: return "
            "`SAEOutput(loss_dict=..., loss=..., acts=..., h_reconstructed=...)`, "
            "since the training loop and the evaluations read its fields by name."
        )
