"""The kinds of work the notebooks do, each as a block of steps the benchmark can time.

Every factory builds its model freshly (seeded) and returns a `Block`: a callable that
runs a fixed number of steps through the real code path (the workbook's training loops and
reference methods, or the plain classroom loop) and returns that number.
"""

from collections.abc import Callable
from functools import partial

import torch

from part_utils.device import get_device
from part_utils.seeding import seed_everything
from tooling.bench.classroom import ClassroomToyModel, ClassroomToySAE, classroom_sae_step, classroom_toy_step
from tooling.bench.compare import Block

TOY = {"n_inst": 16, "n_features": 5, "d_hidden": 2}
LOG_EVERY = 100  # the notebooks log every steps // 200, i.e. every 100 steps of a 20,000-step run


def _block(run: Callable[[], object], steps: int) -> Block:
    """A Block whose one call of `run` does all `steps` steps."""

    def block() -> int:
        run()
        return steps

    return block


def _repeated(step: Callable[[], object], steps: int) -> Block:
    """A Block that calls `step` `steps` times."""

    def run() -> None:
        for _ in range(steps):
            step()

    return _block(run, steps)


def _toy_probability() -> torch.Tensor:
    return 50 ** -torch.linspace(0, 1, TOY["n_inst"])[:, None]


def _toy_importance() -> torch.Tensor:
    return 0.9 ** torch.arange(TOY["n_features"])


def workbook_toy_model(steps: int) -> Block:
    """Part 1's setting through `train_self_supervised` and the reference ToyModel."""
    from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
    from part_utils.training import train_self_supervised

    seed_everything(0)
    model = ToyModel(
        ToyModelConfig(**TOY), feature_probability=_toy_probability(), importance=_toy_importance(), device=get_device()
    )
    return _block(
        partial(train_self_supervised, model, steps=steps, batch_size=1024, lr=1e-3, log_every=LOG_EVERY), steps
    )


def classroom_toy_model(steps: int) -> Block:
    seed_everything(0)
    model = ClassroomToyModel(**TOY, feature_probability=_toy_probability(), importance=_toy_importance())
    return _repeated(classroom_toy_step(model), steps)


def _toy_sae_sizes(wide: bool) -> tuple[dict[str, int], int]:
    """Part 4's SAE (5 features in 2D, d_sae 5), or a wider one (50 features in 64D, d_sae 50)."""
    return (
        ({"n_inst": 16, "n_features": 50, "d_hidden": 64}, 50)
        if wide
        else ({"n_inst": 16, "n_features": 5, "d_hidden": 2}, 5)
    )


def workbook_toy_sae(steps: int, *, wide: bool = False) -> Block:
    """Part 4's SAE through `train_sae` with advanced resampling (every 500 steps, window 100:
    the notebooks' 1 : 5 ratio) and a snapshot every 100 steps, as the animations use."""
    from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
    from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig
    from part_utils.sae_training import train_sae

    sizes, d_sae = _toy_sae_sizes(wide)
    seed_everything(0)
    model = ToyModel(ToyModelConfig(**sizes), feature_probability=0.025, device=get_device())
    sae = ToySAE(ToySAEConfig(n_inst=sizes["n_inst"], d_in=sizes["d_hidden"], d_sae=d_sae), model)
    return _block(
        partial(
            train_sae,
            sae,
            steps=steps,
            batch_size=1024,
            lr=1e-3,
            resample_method="advanced",
            resample_every=500,
            resample_window=100,
            log_every=LOG_EVERY,
        ),
        steps,
    )


def classroom_toy_sae(steps: int, *, wide: bool = False) -> Block:
    sizes, d_sae = _toy_sae_sizes(wide)
    seed_everything(0)
    model = ClassroomToyModel(**sizes, feature_probability=torch.tensor(0.025), importance=torch.tensor(1.0))
    return _repeated(classroom_sae_step(ClassroomToySAE(model, d_sae)), steps)


def transformer_training(steps: int) -> Block:
    """Part 6: training the one-layer palindrome transformer (batch 256)."""
    from part_utils.palindromes import build_palindrome_model, palindrome_dataset, train_palindrome_model

    seed_everything(0)
    model, data = build_palindrome_model(device=get_device()), palindrome_dataset()
    return _block(partial(train_palindrome_model, model, data, steps=steps), steps)


def activation_sae(steps: int) -> Block:
    """Part 6: three L1 SAEs (d_sae 256) on d_model 64 activations, batch 1024."""
    from part_utils.activation_sae import ActivationSource
    from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig
    from part_utils.sae_training import train_sae

    seed_everything(0)
    device = get_device()
    sae = ToySAE(
        ToySAEConfig(n_inst=3, d_in=64, d_sae=256, sparsity_coeff=0.01),
        ActivationSource(torch.randn(50_000, 64, device=device), 3),
    )
    return _block(partial(train_sae, sae, steps=steps, batch_size=1024, lr=1e-3, log_every=steps), steps)


def dense_decoding(steps: int) -> Block:
    """Part 7: the dense decoder (scatter into [64, 49,152], then a matmul with W_dec [49,152, 768])."""
    from part_utils.reference.part5_sae_variants import decode_dense

    seed_everything(0)
    device = get_device()
    W_dec = torch.randn(49_152, 768, device=device)
    top = torch.randn(64, 49_152, device=device).topk(32, dim=-1)
    return _repeated(partial(decode_dense, top.values, top.indices, W_dec), steps)
