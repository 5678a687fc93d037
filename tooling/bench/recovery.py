"""Part 4's feature recovery for each resampling method and training recipe (`bench --sae`)."""

import time

import torch

from part_utils.device import get_device, synchronize
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.seeding import seed_everything
from part_utils.training import train_self_supervised


def toy_sae_recovery(*, steps: int = 10_000, resample_every: int = 1_250, resample_window: int = 250) -> None:
    """Part 4's full-mode setting: per recipe, instances recovering all 5 features at cos >= 0.99
    with no dead latent."""
    from part_utils.reference.part4_toy_sae import (
        ToySAE,
        ToySAEConfig,
        init_encoder_as_decoder_transpose,
        recovery_report,
    )
    from part_utils.sae_training import train_sae
    from part_utils.training import constant_lr, cosine_decay_lr

    seed_everything(0)
    device = get_device()
    single = ToyModel(ToyModelConfig(n_inst=1, n_features=5, d_hidden=2), feature_probability=0.025, device=device)
    train_self_supervised(single, steps=6_000, lr=3e-3, lr_schedule=cosine_decay_lr)
    model = ToyModel(ToyModelConfig(n_inst=16, n_features=5, d_hidden=2), feature_probability=0.025, device=device)
    with torch.no_grad():
        model.W.copy_(single.W.expand_as(model.W))
        model.b_final.copy_(single.b_final.expand_as(model.b_final))
    features = model.W.detach().transpose(1, 2)
    recipes = {
        "classroom": (False, False, False),
        "+ encoder = decoder transpose": (True, False, False),
        "+ cosine lr decay": (False, True, False),
        "+ redundant latents resampled": (False, False, True),
        "all three": (True, True, True),
    }
    print(f"\nToy SAE (16 inst, 5 feats in 2D, p 0.025, d_sae 5, lambda 0.2, batch 1024, lr 1e-3, {steps} steps):")
    print("  mean ± sd over the 16 instances (each its own initialisation and data: the seeds)")
    print(
        f"  {'resampling':<12}{'recipe':<32}{'all 5 & 0 dead':>15}{'dead':>6}"
        f"{'MMCS':>18}{'Hungarian':>18}{'recall':>16}{'seconds':>9}{'steps/s':>9}"
    )
    for method in (None, "simple", "advanced"):
        for name, (encoder_init, decay, redundant) in recipes.items():
            if method is None and name not in ("classroom", "all three"):
                continue
            seed_everything(1)
            sae = ToySAE(ToySAEConfig(n_inst=16, d_in=2, d_sae=5, sparsity_coeff=0.2), model)
            if encoder_init:
                init_encoder_as_decoder_transpose(sae)
            synchronize(device)
            start = time.perf_counter()
            train_sae(
                sae,
                steps=steps,
                batch_size=1024,
                lr=1e-3,
                lr_schedule=cosine_decay_lr if decay else constant_lr,
                resample_method=method,
                resample_every=resample_every,
                resample_window=resample_window,
                resample_redundant_above=0.99 if redundant else None,
                log_every=steps // 200,
            )
            synchronize(device)
            seconds = time.perf_counter() - start
            report = recovery_report(sae, features)
            complete = int(((report["recovered"] == 5) & (report["dead"] == 0)).sum())
            spreads = "".join(f"{_mean_sd(report[key], digits):>{width}}" for key, digits, width in SPREAD_COLUMNS)
            print(
                f"  {str(method):<12}{name:<32}{complete:>12}/16{int(report['dead'].sum()):>6}{spreads}"
                f"{seconds:>9.1f}{steps / seconds:>9.0f}",
                flush=True,
            )


SPREAD_COLUMNS = (("mmcs", 4, 18), ("hungarian", 4, 18), ("recall", 3, 16))  # report key, decimals, column width


def _mean_sd(values: torch.Tensor, digits: int) -> str:
    return f"{values.float().mean():.{digits}f} ± {values.float().std():.{digits}f}"
