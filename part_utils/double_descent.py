"""Deep double descent in a ReLU-output toy model: the Part 3 bonus.

A toy model `h = W x`, `x' = ReLU(Wᵀ h + b)` with 2 hidden dimensions is trained full-batch on a
*fixed* set of T sparse inputs, for several T. With few examples it memorises them; with many it
learns features; test loss on fresh inputs peaks in between.

Regenerate the saved sweep with `python -m part_utils.double_descent` (about a minute on one core).
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from part_utils.section_artefacts import SECTION_DATA

PART3_DOUBLE_DESCENT = SECTION_DATA / "part3_double_descent.npz"


@dataclass(frozen=True)
class DoubleDescentConfig:
    n_features: int = 200
    d_hidden: int = 2
    feature_probability: float = 0.02  # about 4 active features per input
    steps: int = 5_000
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    n_test: int = 4_000


# The sweep the saved result (and the full-mode notebook) uses.
FULL_SIZES = (5, 10, 20, 50, 100, 200, 500, 1_000)
FULL_SEEDS = (0, 1, 2)
# Training-set sizes whose geometry the notebook draws: one memorising, one generalising.
GEOMETRY_SIZES = (5, 1_000)


def sparse_unit_inputs(
    n_inst: int, n_examples: int, cfg: DoubleDescentConfig, generator: torch.Generator
) -> Float[Tensor, "inst examples feats"]:
    """Each feature is active with probability p, uniform on [0, 1]; each input is scaled to unit norm."""
    shape = (n_inst, n_examples, cfg.n_features)
    x = torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) < cfg.feature_probability)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # an all-zero input stays zero


def reconstruction_loss(
    x: Float[Tensor, "inst examples feats"], W: Float[Tensor, "inst d_hidden feats"], b: Float[Tensor, "inst feats"]
) -> Float[Tensor, " inst"]:
    """Squared error summed over features, averaged over examples, per instance."""
    h = einsum(x, W, "inst ex feats, inst d_hidden feats -> inst ex d_hidden")
    out = torch.relu(einsum(h, W, "inst ex d_hidden, inst d_hidden feats -> inst ex feats") + b[:, None, :])
    return (out - x).pow(2).sum(-1).mean(-1)


@dataclass
class TrainedModels:
    W: Float[Tensor, "seeds d_hidden feats"]
    b: Float[Tensor, "seeds feats"]
    train_inputs: Float[Tensor, "seeds examples feats"]
    train_loss: Float[Tensor, " seeds"]
    test_loss: Float[Tensor, " seeds"]


def train_on_fixed_set(n_examples: int, seeds: tuple[int, ...], cfg: DoubleDescentConfig) -> TrainedModels:
    """Train one model per seed (batched as instances) on its own fixed set of `n_examples` inputs."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    x_train = torch.cat([sparse_unit_inputs(1, n_examples, cfg, g) for g in generators])
    W0 = torch.cat([torch.randn(1, cfg.d_hidden, cfg.n_features, generator=g) for g in generators])
    W = (W0 * math.sqrt(2 / (cfg.d_hidden + cfg.n_features))).requires_grad_()  # Xavier-normal scale
    b = torch.zeros(len(seeds), cfg.n_features, requires_grad=True)

    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (cfg.steps - warmup)))

    optimizer = torch.optim.AdamW([W, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    for _ in range(cfg.steps):  # full batch: every step sees the whole training set
        loss = reconstruction_loss(x_train, W, b)
        optimizer.zero_grad()
        loss.sum().backward()  # instances are independent: Adam and weight decay act elementwise
        optimizer.step()
        scheduler.step()

    with torch.no_grad():
        # Fresh test inputs from a stream of their own, the same for every training-set size.
        x_test = torch.cat(
            [sparse_unit_inputs(1, cfg.n_test, cfg, torch.Generator().manual_seed(10_000 + s)) for s in seeds]
        )
        return TrainedModels(
            W.detach(), b.detach(), x_train, reconstruction_loss(x_train, W, b), reconstruction_loss(x_test, W, b)
        )


@dataclass
class DoubleDescentSweep:
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    train_loss: Float[Tensor, "sizes seeds"]
    test_loss: Float[Tensor, "sizes seeds"]
    W: Float[Tensor, "sizes seeds d_hidden feats"]
    # The first seed's training-example hidden vectors `W x` at each geometry size.
    example_hidden: dict[int, Float[Tensor, "examples d_hidden"]]
    seconds: float


def run_sweep(
    sizes: tuple[int, ...] = FULL_SIZES,
    seeds: tuple[int, ...] = FULL_SEEDS,
    cfg: DoubleDescentConfig = DoubleDescentConfig(),
    geometry_sizes: tuple[int, ...] = GEOMETRY_SIZES,
    verbose: bool = False,
) -> DoubleDescentSweep:
    start = time.perf_counter()
    train_loss, test_loss, W, example_hidden = [], [], [], {}
    for size in sizes:
        models = train_on_fixed_set(size, seeds, cfg)
        train_loss.append(models.train_loss)
        test_loss.append(models.test_loss)
        W.append(models.W)
        if size in geometry_sizes:
            example_hidden[size] = einsum(
                models.train_inputs[0], models.W[0], "ex feats, d_hidden feats -> ex d_hidden"
            )
        if verbose:
            print(
                f"T = {size:>5}: train {models.train_loss.mean():.3f}, test {models.test_loss.mean():.3f}", flush=True
            )
    return DoubleDescentSweep(
        tuple(sizes),
        tuple(seeds),
        torch.stack(train_loss),
        torch.stack(test_loss),
        torch.stack(W),
        example_hidden,
        time.perf_counter() - start,
    )


def save_sweep(sweep: DoubleDescentSweep, cfg: DoubleDescentConfig) -> None:
    np.savez_compressed(
        PART3_DOUBLE_DESCENT,
        sizes=np.array(sweep.sizes),
        seeds=np.array(sweep.seeds),
        train_loss=sweep.train_loss.numpy(),
        test_loss=sweep.test_loss.numpy(),
        W=sweep.W.numpy().astype(np.float32),
        geometry_sizes=np.array(sorted(sweep.example_hidden)),
        **{f"example_hidden_{size}": h.numpy() for size, h in sweep.example_hidden.items()},
        config=np.array([asdict(cfg)[key] for key in asdict(cfg)], dtype=np.float64),
        config_keys=np.array(list(asdict(cfg))),
        seconds=np.array(sweep.seconds),
    )


def load_sweep() -> tuple[DoubleDescentSweep, DoubleDescentConfig]:
    with np.load(PART3_DOUBLE_DESCENT) as data:
        values = dict(zip(data["config_keys"].tolist(), data["config"].tolist()))
        defaults = asdict(DoubleDescentConfig())
        cfg = DoubleDescentConfig(**{key: type(defaults[key])(value) for key, value in values.items()})
        sweep = DoubleDescentSweep(
            tuple(data["sizes"].tolist()),
            tuple(data["seeds"].tolist()),
            torch.from_numpy(data["train_loss"]),
            torch.from_numpy(data["test_loss"]),
            torch.from_numpy(data["W"]),
            {int(s): torch.from_numpy(data[f"example_hidden_{s}"]) for s in data["geometry_sizes"]},
            float(data["seconds"]),
        )
    return sweep, cfg


if __name__ == "__main__":
    torch.set_num_threads(1)
    config = DoubleDescentConfig()
    result = run_sweep(cfg=config, verbose=True)
    save_sweep(result, config)
    print(f"saved {PART3_DOUBLE_DESCENT} ({result.seconds:.0f} s)")
