"""Part 5's sweeps: one architecture at each of its sparsity settings, several seeds per setting, all
trained side by side as the instances of one SAE, then measured per setting."""

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.experiments.variant_summary import SettingReport, show_summary
from part_utils.plotting.sae import animate_sae_training
from part_utils.reference.part4_toy_sae import init_encoder_as_decoder_transpose
from part_utils.results import Results
from part_utils.sae_registry import Definitions, build_sae, repeat_settings, setting_label
from part_utils.sae_training import SAETrainingLog
from part_utils.seeding import seed_everything
from part_utils.training import cosine_decay_lr

SWEEP_SEED = 1


class VariantSweep:
    """Trains each architecture of `settings` (name → its settings of λ or k) with `n_per_setting` seeds
    per setting, on copies of the toy model from `make_model(n_inst)`, with Part 4's best recipe and
    `resampling`; `set_up` (name → function) adjusts an architecture's SAE before it trains.

    Keeps, per architecture, the trained SAE, its training log and one report per setting, all under
    the architecture's label (its name unless `run` gives another).
    """

    def __init__(
        self,
        definitions: Definitions,
        make_model: Callable[[int], nn.Module],
        feature_directions: Callable[[int], Float[Tensor, "inst feats d_in"]],
        settings: Mapping[str, Sequence[float]],
        results: Results,
        *,
        n_per_setting: int,
        steps: int,
        resampling: Mapping[str, Any],
        set_up: Mapping[str, Callable[[nn.Module], None]] | None = None,
    ) -> None:
        self.definitions, self.make_model, self.feature_directions = definitions, make_model, feature_directions
        self.settings, self.results = settings, results
        self.n_per_setting, self.steps, self.resampling = n_per_setting, steps, resampling
        self.set_up = set_up or {}
        self.names: dict[str, str] = {}  # label → architecture
        self.widths: dict[str, int] = {}
        self.trained: dict[str, nn.Module] = {}
        self.logs: dict[str, SAETrainingLog] = {}
        self.reports: dict[str, list[SettingReport]] = {}

    @property
    def n_features(self) -> int:
        return self.feature_directions(1).shape[1]

    def train(self, sae: nn.Module, description: str) -> SAETrainingLog:
        """Part 4's best recipe: encoder started as the decoder's transpose, cosine decay, advanced resampling."""
        init_encoder_as_decoder_transpose(sae)
        return sae.optimize(
            steps=self.steps,
            batch_size=1024,
            lr=1e-3,
            lr_schedule=cosine_decay_lr,
            resample_method="advanced",
            **self.resampling,
            log_every=max(1, self.steps // 100),
            description=description,
        )

    def run(self, name: str, *, d_sae: int, label: str | None = None) -> None:
        """Train architecture `name` at all its settings, side by side, and report on each setting."""
        label = label or name
        settings = self.settings[name]
        per_instance = repeat_settings(settings, self.n_per_setting)
        seed_everything(SWEEP_SEED)
        model = self.make_model(len(per_instance))
        sae = build_sae(name, per_instance, model, self.definitions, d_sae=d_sae, set_up=self.set_up.get(name))
        self.names[label], self.widths[label] = name, d_sae
        self.logs[label] = self.train(sae, f"{label}, {len(settings)} settings")
        self.trained[label] = sae
        report = self.definitions["variant_report"](sae, self.feature_directions(len(per_instance)))
        self.reports[label] = [
            {"setting": setting_label(name, setting), **{key: value[group] for key, value in report.items()}}
            for setting, group in self.groups(label)
        ]
        print(f"{label}: trained {len(settings)} settings × {self.n_per_setting} seeds")

    def groups(self, label: str) -> Iterator[tuple[float, slice]]:
        """Each setting of an architecture that has run, with the slice of its instances (its seeds)."""
        for index, setting in enumerate(self.settings[self.names[label]]):
            yield setting, slice(index * self.n_per_setting, (index + 1) * self.n_per_setting)

    def report_of(self, label: str, setting: float) -> SettingReport:
        wanted = setting_label(self.names[label], setting)
        return next(report for report in self.reports[label] if report["setting"] == wanted)

    def show_summary(self) -> list[dict[str, Any]]:
        """The table and the Pareto plot of every architecture that has run; records what the text quotes."""
        n_per_setting, steps = self.n_per_setting, self.steps
        return show_summary(self.reports, self.n_features, self.results, n_per_setting=n_per_setting, steps=steps)

    def animate_middle_setting(self, label: str, max_instances: int = 8) -> go.Figure:
        """The training of the first seeds at the architecture's middle setting."""
        n_settings = len(self.settings[self.names[label]])
        first = n_settings // 2 * self.n_per_setting
        instances = range(first, first + min(max_instances, self.n_per_setting))
        directions = self.feature_directions(n_settings * self.n_per_setting)
        return animate_sae_training(self.logs[label], directions, instances=instances, title=f"{label} SAE training")
