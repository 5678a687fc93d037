"""Two questions Part 5 asks of its sweeps: does a different estimator fix JumpReLU's pair codes, and does
BatchTopK keep its L0 at inference?"""

from collections.abc import Callable

from torch import Tensor, nn

from part_utils.experiments.variant_summary import SUMMARISED, count_recovered
from part_utils.experiments.variant_sweep import SWEEP_SEED, VariantSweep
from part_utils.sae_registry import build_sae, setting_label
from part_utils.seeding import seed_everything


def compare_l0_estimators(sweep: VariantSweep, label: str, setting: float, sae_class: type, description: str) -> None:
    """Train `sae_class` (a variant of the architecture's class, same config) at one setting, with the sweep's
    seeds and recipe, and print it beside the sweep's own run at that setting; records `diagnosis.*`."""
    name, n = sweep.names[label], sweep.n_per_setting
    seed_everything(SWEEP_SEED)
    model = sweep.make_model(n)
    sae = build_sae(name, [setting] * n, model, sweep.definitions, d_sae=sweep.widths[label], sae_class=sae_class)
    sweep.train(sae, description)
    comparison = {
        "reference estimator (∂H/∂z = 0)": sweep.report_of(label, setting),
        "L0 gradient reaches z": sweep.definitions["variant_report"](sae, sweep.feature_directions(n)),
    }
    for (estimator, report), result in zip(comparison.items(), ("reference", "through_z")):
        recovered = count_recovered(report, sweep.n_features)
        print(
            f"{label} {setting_label(name, setting)}, {estimator:<32} recovered {recovered:>2}/{n}"
            f"  MMCS {report['mmcs'].mean():.4f}  Hungarian {report['hungarian'].mean():.4f}"
            f"  recall {report['recall'].mean():.3f}"
            f"  L0 {report['l0'].mean():.3f}  FVU {report['fvu'].mean():.4f}  γ {report['gamma'].mean():.3f}"
        )
        for key in SUMMARISED:
            sweep.results.record(f"diagnosis.{result}.{key}", report[key])
        sweep.results.record(f"diagnosis.{result}.recovered", recovered)
    sweep.results.record("diagnosis.lam", setting)


def show_batch_topk_inference(sweep: VariantSweep, batch_topk_l0: Callable[[nn.Module], tuple[Tensor, Tensor]]) -> None:
    """BatchTopK's mean L0 per setting, with batch top-k and with its learned threshold; records both."""
    l0_training, l0_inference = batch_topk_l0(sweep.trained["BatchTopK"])
    for k, group in sweep.groups("BatchTopK"):
        sweep.results.record(f"batchtopk_inference.k{k:g}.training", l0_training[group])
        sweep.results.record(f"batchtopk_inference.k{k:g}.inference", l0_inference[group])
        print(
            f"BatchTopK k={k:<5g} L0 with batch top-k: {l0_training[group].mean():.4f}"
            f"   with the learned threshold: {l0_inference[group].mean():.4f}"
        )
