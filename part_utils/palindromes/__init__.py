"""Part 6's task: the palindrome language and the small transformer trained on it."""

from part_utils.palindromes.language import (
    MIRRORED_POSITIONS,
    SEQUENCE_LENGTH,
    PalindromeDataset,
    PalindromeTokenizer,
    palindrome,
    palindrome_dataset,
)
from part_utils.palindromes.model import (
    build_palindrome_model,
    load_palindrome_model,
    mirrored_accuracy,
    mlp_weights,
    next_token_loss,
    palindrome_model_config,
    per_position_accuracy,
    train_palindrome_model,
)

__all__ = [
    "MIRRORED_POSITIONS",
    "SEQUENCE_LENGTH",
    "PalindromeDataset",
    "PalindromeTokenizer",
    "build_palindrome_model",
    "load_palindrome_model",
    "mirrored_accuracy",
    "mlp_weights",
    "next_token_loss",
    "palindrome",
    "palindrome_dataset",
    "palindrome_model_config",
    "per_position_accuracy",
    "train_palindrome_model",
]
