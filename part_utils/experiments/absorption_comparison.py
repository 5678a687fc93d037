"""Part 8's comparison: SAEs of every architecture trained on the hierarchical data, several settings and
seeds side by side in one SAE each, then measured per setting (recovery, reconstruction, absorption and
the splitting census) into rows that tables, figures and the results file share."""

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from part_utils.hierarchy import splitting_census
from part_utils.plotting.absorption import Panel, plot_decoder_decomposition
from part_utils.reference.part4_toy_sae import RECOVERED_AT, init_encoder_as_decoder_transpose
from part_utils.results import Results
from part_utils.sae_registry import Definitions, build_sae, repeat_settings, setting_key, setting_label
from part_utils.sae_training import SAESnapshot
from part_utils.seeding import seed_everything

BUILD_SEED, EVALUATION_SEED = 1, 1000
PER_SEED = ("l0", "fvu", "gamma", "dead", "mmcs", "hungarian", "recall", "recovered")
PER_PARENT = ("absorption", "absorption_all_inputs", "absorption_fraction", "fires_alone", "fires_with_child")

FORMATS = {
    ".1f": ("dead", "mixed_latents"),
    ".2f": ("l0", "gamma", "recall", "latents_per_parent"),
    ".3f": ("mmcs", "hungarian", "absorption", "absorption_all_inputs", "absorption_fraction"),
    ".4f": ("fvu",),
}
"""How Part 8's tables show each metric, so that every table shows a metric alike."""
HEADERS = {
    "l0": "L0",
    "fvu": "FVU",
    "gamma": "γ",
    "mmcs": "MMCS",
    "hungarian": "Hungarian",
    "absorption_all_inputs": "absorption, all parent inputs",
    "mixed_latents": "latents mixing families",
}
"""Column headers that are not the metric's name with spaces for underscores."""

Row = dict[str, Any]
"""One setting of one SAE: architecture, setting, d_sae, each metric's mean and `_sd` over seeds, the
per-seed values under `seeds`, and per-parent details."""


def table_columns(*metrics: str) -> list[tuple[str, str, str]]:
    """(header, row key, format) for `rows_table`, one per metric."""
    format_of = {metric: fmt for fmt, formatted in FORMATS.items() for metric in formatted}
    return [(HEADERS.get(metric, metric.replace("_", " ")), metric, format_of[metric]) for metric in metrics]


class WeightRecorder:
    """Called by train_sae at each log step: keeps a copy of the SAE's weights and buffers."""

    def __init__(self, sae: nn.Module) -> None:
        self.sae = sae
        self.steps: list[int] = []
        self.states: list[dict[str, Tensor]] = []

    def __call__(self, snapshot: SAESnapshot) -> None:
        self.steps.append(snapshot.step)
        self.states.append({name: tensor.detach().clone() for name, tensor in self.sae.state_dict().items()})


class AbsorptionComparison:
    """Trains and measures SAEs on the hierarchical data with one recipe.

    `settings`: architecture → its sparsity settings; `config_changes`: architecture → config fields that
    differ from the class's defaults. Keeps the main SAE of each architecture (`trained`, at d_sae and its
    settings), the weight recorders of those that kept their weights, and every evaluated row (`rows`).
    Records the settings the text quotes when built.
    """

    def __init__(
        self,
        definitions: Definitions,
        settings: Mapping[str, Sequence[float]],
        recipe: Mapping[str, Any],
        results: Results,
        *,
        n_per_setting: int,
        steps: int,
        eval_samples: int,
        d_sae: int,
        device: torch.device | str,
        config_changes: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.definitions, self.settings, self.recipe, self.results = definitions, settings, recipe, results
        self.n_per_setting, self.steps, self.eval_samples, self.d_sae = n_per_setting, steps, eval_samples, d_sae
        self.device, self.config_changes = device, config_changes or {}
        self.trained: dict[str, nn.Module] = {}
        self.recorders: dict[str, WeightRecorder] = {}
        self.rows: dict[str, list[Row]] = {}
        self._record_settings()

    def _record_settings(self) -> None:
        for name, values in self.settings.items():
            self.results.record(f"settings.{name}", values)
        for name in ("lr", "batch_size"):
            self.results.record(f"settings.{name}", self.recipe[name])
        self.results.record("settings.steps", self.steps)
        self.results.record("settings.resample_every", self.recipe["resample_every"])
        self.results.record("settings.redundant_above", self.recipe["resample_redundant_above"])
        self.results.record("settings.rarer_than", self.recipe["resample_rarer_than"])
        self.results.record("settings.seeds", self.n_per_setting)
        self.results.record("settings.eval_samples", self.eval_samples)
        self.results.record("settings.recovered_at", RECOVERED_AT)

    def build(self, name: str, settings: Sequence[float], width: int, d_hidden: int | None = None) -> nn.Module:
        """One SAE whose instances train `settings` side by side, n_per_setting instances each."""
        seed_everything(BUILD_SEED)
        per_instance = repeat_settings(settings, self.n_per_setting)
        data_cfg = self.definitions["HierarchyConfig"](n_inst=len(per_instance), d_hidden=d_hidden)
        data = self.definitions["HierarchicalToyData"](data_cfg, device=self.device)
        changes = self.config_changes.get(name)
        return build_sae(name, per_instance, data, self.definitions, d_sae=width, config_changes=changes)

    def train_sae(
        self,
        name: str,
        settings: Sequence[float],
        width: int | None = None,
        *,
        d_hidden: int | None = None,
        record: bool = False,
        decoder_row_norm: float | None = None,
        **recipe_changes: Any,
    ) -> tuple[nn.Module, WeightRecorder | None]:
        """Train one SAE whose instances cover `settings`; `decoder_row_norm` rescales the initial decoder rows
        (None keeps the Kaiming initialisation, rows of norm about 0.09); `recipe_changes` override the recipe;
        `record` keeps a copy of the weights at every log step."""
        width = self.d_sae if width is None else width
        sae = self.build(name, settings, width, d_hidden)
        if decoder_row_norm is not None:
            sae._W_dec.data.copy_(F.normalize(sae._W_dec.data, dim=-1) * decoder_row_norm)
        recorder = WeightRecorder(sae) if record else None
        init_encoder_as_decoder_transpose(sae)
        description = f"{name}, d_sae {width}, {len(settings)} settings"
        sae.optimize(steps=self.steps, **{**self.recipe, **recipe_changes}, on_log=recorder, description=description)
        return sae, recorder

    def train(self, name: str, *, record: bool = False) -> None:
        """Train the main SAE of an architecture: d_sae latents, at its settings."""
        self.trained[name], recorder = self.train_sae(name, self.settings[name], record=record)
        if recorder is not None:
            self.recorders[name] = recorder

    def evaluate(self, name: str) -> None:
        """The rows of an architecture's main SAE."""
        self.rows[name] = self.evaluate_sae(name, self.trained[name], self.settings[name])

    def evaluate_sae(self, name: str, sae: nn.Module, settings: Sequence[float], prefix: str = "") -> list[Row]:
        """One row per setting: each metric per seed (`seeds`), its mean and spread, and the per-parent details.
        Every per-seed metric is recorded as `<prefix><architecture>.<setting>.d<d_sae>.<metric>`."""
        seed_everything(EVALUATION_SEED)
        report = self.definitions["variant_report"](sae, sae.model.feature_directions, n_samples=self.eval_samples)
        absorption = self.definitions["absorption_report"](sae, self.features(sae, self.eval_samples))
        census = splitting_census(absorption["cosine"], absorption["live"], sae.model.cfg.n_parents)
        per_seed = {key: report[key].double() for key in PER_SEED}
        per_seed |= {key: absorption[key].double().mean(dim=-1) for key in PER_PARENT}
        per_seed |= {key: value.double() for key, value in census.items()}
        rows = []
        for index, value in enumerate(settings):
            group = slice(index * self.n_per_setting, (index + 1) * self.n_per_setting)
            seeds = {key: values[group] for key, values in per_seed.items()}
            label = setting_label(name, value)
            row = {"architecture": name, "setting": label, "d_sae": sae.cfg.d_sae, "seeds": seeds}
            for key, values in seeds.items():
                row[key], row[f"{key}_sd"] = values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)
                self.results.record(f"{prefix}{name}.{setting_key(name, value)}.d{sae.cfg.d_sae}.{key}", values)
            row |= {
                "absorption_per_parent": absorption["absorption"][group].mean(dim=0),
                "absorption_per_child_by_instance": absorption["absorption_per_child"][group],
                "fires_alone": absorption["fires_alone"][group].mean(dim=0),
                "fires_with_child": absorption["fires_with_child"][group].mean(dim=0),
            }
            rows.append(row)
        return rows

    def row_of(self, name: str, setting: float, width: int | None = None) -> Row:
        label, width = setting_label(name, setting), self.d_sae if width is None else width
        return next(row for row in self.rows[name] if row["setting"] == label and row["d_sae"] == width)

    def main_rows(self) -> list[Row]:
        """The rows of every architecture's main SAE, in the order of `settings`."""
        return [row for name in self.settings for row in self.rows[name] if row["d_sae"] == self.d_sae]

    @staticmethod
    def label(name: str, setting: float) -> str:
        """How figures and printouts name one setting of one architecture: "BatchTopK, k=1.35"."""
        return f"{name}, {setting_label(name, setting)}"

    def first_instance(self, name: str, setting: float) -> int:
        """The first instance (seed) of a setting in the architecture's main SAE."""
        return self.settings[name].index(setting) * self.n_per_setting

    def seeds_of(self, name: str, setting: float) -> range:
        first = self.first_instance(name, setting)
        return range(first, first + self.n_per_setting)

    def features(self, sae: nn.Module, n_samples: int) -> Float[Tensor, "batch inst feats"]:
        """The fixed evaluation sample of features for an SAE of this many instances."""
        return self.definitions["evaluation_features"](sae, n_samples)

    def decomposition_panel(self, sae: nn.Module, instance: int) -> Panel:
        """(decoder cosines [d_sae, feats], live latents [d_sae]) of one instance."""
        acts = self.definitions["inference_acts"](sae, self.features(sae, 4_096))
        live = (acts[:, instance] > 0).any(dim=0)
        return self.definitions["decoder_cosines"](sae)[instance].cpu(), live.cpu()

    def plot_decomposition(self, chosen: Mapping[str, float], *, title: str) -> go.Figure:
        """The decoder decomposition of the first seed of each chosen (architecture, setting)."""
        panels = {
            self.label(name, setting): self.decomposition_panel(self.trained[name], self.first_instance(name, setting))
            for name, setting in chosen.items()
        }
        tree = next(iter(self.trained.values())).model.cfg
        return plot_decoder_decomposition(panels, tree.n_parents, tree.n_children, title=title)
