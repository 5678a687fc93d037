"""The mirror language `<abc|f(c)f(b)f(a)>`: the palindrome's first half, mirrored and passed through a letter map.

The tokenizer is Part 6's (same 29 tokens). The letter map f is a fixed derangement of the alphabet (no letter maps to
itself), so the model cannot finish a string by copying: it must fetch the mirrored letter and then apply f.
"""

import torch
from jaxtyping import Int
from torch import Tensor

from part_utils.palindromes.language import (
    BEGIN,
    END,
    LETTERS,
    SEPARATOR,
    PalindromeDataset,
    PalindromeTokenizer,
    split_strings,
)

HALF_LENGTH = 3
SEQUENCE_LENGTH = 2 * HALF_LENGTH + 3  # begin, letters, separator, mapped mirrored letters, end
# Positions whose next token is a mapped letter (position p predicts token p + 1): the separator and the first two
# mapped letters. The end token is predicted at SEQUENCE_LENGTH - 2.
OUTPUT_POSITIONS = tuple(range(HALF_LENGTH + 1, 2 * HALF_LENGTH + 1))
END_POSITION = SEQUENCE_LENGTH - 2
LETTER_MAP_SEED = 0  # torch.Generator seed of the derangement's rejection sampling
FIRST_LETTER_TOKEN = PalindromeTokenizer().index[LETTERS[0]]


def draw_derangement(seed: int = LETTER_MAP_SEED) -> str:
    """Uniform random permutations from a seeded generator until one has no fixed point (about e ≈ 2.7 draws)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        permutation = torch.randperm(len(LETTERS), generator=generator)
        if not (permutation == torch.arange(len(LETTERS))).any():
            return "".join(LETTERS[i] for i in permutation.tolist())


LETTER_MAP = draw_derangement()
"""f('a'), f('b'), …, f('z')."""


def apply_letter_map(letters: str) -> str:
    return "".join(LETTER_MAP[LETTERS.index(letter)] for letter in letters)


def mirror(letters: str) -> str:
    return BEGIN + letters + SEPARATOR + apply_letter_map(letters[::-1]) + END


def mirrored_source_position(position: int) -> int:
    """For an output position p, the input position of the letter x with f(x) = token p + 1 (4 → 3, 5 → 2, 6 → 1)."""
    if position not in OUTPUT_POSITIONS:
        raise ValueError(f"position {position} is not an output position {OUTPUT_POSITIONS}")
    return 2 * HALF_LENGTH + 1 - position


def ground_truth(tokens: Int[Tensor, "batch pos"]) -> tuple[Int[Tensor, "batch out"], Int[Tensor, "batch out"]]:
    """Per output position (in OUTPUT_POSITIONS order): the mirrored letter x and the target f(x), as indices 0..25."""
    sources = [mirrored_source_position(p) for p in OUTPUT_POSITIONS]
    mirrored = tokens[:, sources] - FIRST_LETTER_TOKEN
    letter_map = torch.tensor([LETTERS.index(letter) for letter in LETTER_MAP], device=tokens.device)
    return mirrored, letter_map[mirrored]


def mirror_dataset(test_fraction: float = 0.2, seed: int = 0) -> PalindromeDataset:
    """All 26³ mirror strings, shuffled once with `seed` and split; held-out strings are never trained on."""
    return split_strings(mirror, test_fraction, seed)
