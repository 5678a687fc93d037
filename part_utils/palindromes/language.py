"""The palindrome language `<abc|cba>`: its tokenizer and a fixed train/test split."""

import itertools
import string
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

BEGIN, SEPARATOR, END = "<", "|", ">"
LETTERS = string.ascii_lowercase
HALF_LENGTH = 3
SEQUENCE_LENGTH = 2 * HALF_LENGTH + 3  # begin, letters, separator, mirrored letters, end
# Positions whose next token is fully determined by the first half: the separator's
# successor onwards (the mirrored letters and the end token).
MIRRORED_POSITIONS = tuple(range(HALF_LENGTH + 1, SEQUENCE_LENGTH - 1))


class PalindromeTokenizer:
    """One token per character: the three markers first, then the 26 letters."""

    def __init__(self) -> None:
        self.vocabulary = [BEGIN, SEPARATOR, END, *LETTERS]
        self.index = {character: i for i, character in enumerate(self.vocabulary)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, texts: str | list[str]) -> Int[Tensor, "batch pos"]:
        texts = [texts] if isinstance(texts, str) else texts
        unknown = sorted({c for text in texts for c in text if c not in self.index})
        if unknown:
            raise ValueError(
                f"characters {unknown} are not in the vocabulary; "
                f"expected lowercase letters and '{BEGIN}{SEPARATOR}{END}'"
            )
        if len({len(text) for text in texts}) > 1:
            raise ValueError("all strings in a batch must have the same length")
        return torch.tensor([[self.index[c] for c in text] for text in texts], dtype=torch.long)

    def decode(self, tokens: Int[Tensor, "... pos"]) -> str | list[str]:
        self.validate(tokens)
        if tokens.ndim == 1:
            return "".join(self.vocabulary[t] for t in tokens.tolist())
        return [self.decode(row) for row in tokens]

    def validate(self, tokens: Tensor) -> None:
        """Refuse anything that is not a tensor of token ids this vocabulary knows."""
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be an integer tensor of ids, got dtype {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size - 1}]; "
                f"got values from {tokens.min().item()} to {tokens.max().item()}"
            )


def palindrome(letters: str) -> str:
    return BEGIN + letters + SEPARATOR + letters[::-1] + END


@dataclass
class PalindromeDataset:
    """Every string of a language over three-letter first halves, split once into training and held-out strings."""

    tokenizer: PalindromeTokenizer
    train_tokens: Int[Tensor, "n_train pos"]
    test_tokens: Int[Tensor, "n_test pos"]


def split_strings(complete: Callable[[str], str], test_fraction: float = 0.2, seed: int = 0) -> PalindromeDataset:
    """`complete(first_half)` for all 26³ first halves, shuffled once with `seed` and split: held-out strings
    are never trained on. Part 6 completes palindromes, Part 9 mirror strings."""
    tokenizer = PalindromeTokenizer()
    everything = [complete("".join(letters)) for letters in itertools.product(LETTERS, repeat=HALF_LENGTH)]
    tokens = tokenizer.encode(everything)
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(tokens) * test_fraction)
    return PalindromeDataset(tokenizer, train_tokens=tokens[order[n_test:]], test_tokens=tokens[order[:n_test]])


def palindrome_dataset(test_fraction: float = 0.2, seed: int = 0) -> PalindromeDataset:
    """All 26³ palindromes, shuffled once with `seed` and split; held-out strings are never trained on."""
    return split_strings(palindrome, test_fraction, seed)
