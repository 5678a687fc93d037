"""The one-layer transformer that reads palindromes: build, train, evaluate, load."""

from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import TransformerBridge, TransformerBridgeConfig

from part_utils.device import get_device
from part_utils.palindromes.language import (
    MIRRORED_POSITIONS,
    SEQUENCE_LENGTH,
    PalindromeDataset,
    PalindromeTokenizer,
)
from part_utils.progress import progress_bar
from part_utils.training import set_learning_rate, warmup_cosine_lr

WEIGHTS_PATH = Path(__file__).resolve().parents[2] / "section_data" / "part6_palindrome_model.pt"


def palindrome_model_config(seed: int = 0) -> TransformerBridgeConfig:
    return TransformerBridgeConfig(
        d_model=64,
        d_head=16,
        n_heads=4,
        d_mlp=256,
        n_layers=1,
        n_ctx=SEQUENCE_LENGTH,
        d_vocab=PalindromeTokenizer().vocab_size,
        act_fn="relu",
        normalization_type="LN",
        seed=seed,
    )


def build_palindrome_model(seed: int = 0, device: torch.device | None = None) -> TransformerBridge:
    return TransformerBridge.boot_native(palindrome_model_config(seed), device=device or get_device())


def next_token_loss(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, ""]:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def train_palindrome_model(
    model: TransformerBridge,
    data: PalindromeDataset,
    steps: int = 1_500,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> list[float]:
    """Next-token training on the training strings; returns the loss at every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    device = next(model.parameters()).device
    train = data.train_tokens.to(device)
    losses = []
    model.train()
    for step in (progress := progress_bar(range(steps), "palindrome model")):
        set_learning_rate(optimizer, lr * warmup_cosine_lr(step, steps))
        batch = train[torch.randint(len(train), (batch_size,), generator=generator).to(device)]
        loss = next_token_loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def per_position_accuracy(model: TransformerBridge, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, " pos_minus_1"]:
    """Accuracy of the most likely next token at each position (position p predicts token p + 1)."""
    tokens = tokens.to(next(model.parameters()).device)
    predictions = model(tokens).argmax(dim=-1)[:, :-1]
    return (predictions == tokens[:, 1:]).float().mean(dim=0).cpu()


def mirrored_accuracy(model: TransformerBridge, tokens: Int[Tensor, "batch pos"]) -> float:
    """Accuracy over the positions whose next token is determined: the mirrored half and the end."""
    return per_position_accuracy(model, tokens)[list(MIRRORED_POSITIONS)].mean().item()


def load_palindrome_model(path: Path = WEIGHTS_PATH, device: torch.device | None = None) -> TransformerBridge:
    """The trained model shipped in section_data/, in eval mode and frozen."""
    model = build_palindrome_model(device=device)
    model.load_state_dict(torch.load(path, map_location=next(model.parameters()).device, weights_only=True))
    return model.eval().requires_grad_(False)


def mlp_weights(
    model: TransformerBridge,
) -> tuple[
    Float[Tensor, "d_model d_mlp"], Float[Tensor, " d_mlp"], Float[Tensor, "d_mlp d_model"], Float[Tensor, " d_model"]
]:
    """The MLP of block 0 in TransformerLens layout: post = ReLU(x W_in + b_in); out = post W_out + b_out."""
    return model.W_in[0], model.b_in[0], model.W_out[0], model.b_out[0]
