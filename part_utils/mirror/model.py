"""The two-layer transformer that completes mirror strings: build, train, evaluate, load.

One narrow head per layer (d_head = 4) is a deliberate design choice: a wide attention OV circuit can fetch the
mirrored letter and apply the letter map f in the same linear step, leaving the MLPs idle. Through a four-dimensional
head the fetched letter arrives compressed, and the model learns to apply f in an MLP instead (see analysis.py).
"""

from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge, TransformerBridgeConfig

from part_utils.device import get_device
from part_utils.mirror.language import END_POSITION, OUTPUT_POSITIONS, SEQUENCE_LENGTH
from part_utils.palindromes.language import PalindromeDataset, PalindromeTokenizer
from part_utils.palindromes.model import per_position_accuracy, train_palindrome_model

WEIGHTS_PATH = Path(__file__).resolve().parents[2] / "section_data" / "part9_mirror_model.pt"
TRAINING_STEPS = 1_500


def mirror_model_config(seed: int = 0) -> TransformerBridgeConfig:
    return TransformerBridgeConfig(
        d_model=64,
        d_head=4,
        n_heads=1,
        d_mlp=256,
        n_layers=2,
        n_ctx=SEQUENCE_LENGTH,
        d_vocab=PalindromeTokenizer().vocab_size,
        act_fn="relu",
        normalization_type="LN",
        seed=seed,
    )


def build_mirror_model(seed: int = 0, device: torch.device | None = None) -> TransformerBridge:
    return TransformerBridge.boot_native(mirror_model_config(seed), device=device or get_device())


def train_mirror_model(
    model: TransformerBridge, data: PalindromeDataset, steps: int = TRAINING_STEPS, seed: int = 0
) -> list[float]:
    """Part 6's next-token training loop (AdamW, warm-up then cosine decay) on the mirror strings."""
    return train_palindrome_model(model, data, steps=steps, seed=seed)


def output_accuracy(model: TransformerBridge, tokens: Int[Tensor, "batch pos"]) -> dict[int, float]:
    """Next-token accuracy at each output position and at the position that predicts the end token."""
    accuracy: Float[Tensor, " pos_minus_1"] = per_position_accuracy(model, tokens)
    return {p: accuracy[p].item() for p in (*OUTPUT_POSITIONS, END_POSITION)}


def load_mirror_model(path: Path = WEIGHTS_PATH, device: torch.device | None = None) -> TransformerBridge:
    """The trained model shipped in section_data/, in eval mode and frozen."""
    model = build_mirror_model(device=device)
    model.load_state_dict(torch.load(path, map_location=next(model.parameters()).device, weights_only=True))
    return model.eval().requires_grad_(False)
