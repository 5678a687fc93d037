"""Every toy SAE architecture of Parts 4, 5 and 8 by name, and how to build a sweep of one.

An entry names its SAE and config classes and the config field its sweep varies: λ
(`sparsity_coeff`) or k. A sweep is one SAE whose instances each get their own setting.

Classes are looked up by name in the notebook first (`Definitions`), so that a sweep trains the
learner's own SAEs; a name the notebook does not define comes from the reference module of the
part that defines it, never from the calling part's own reference module, which a graded
notebook cannot see. Adding an architecture means one class and one entry here.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import torch
from torch import nn

DEFINED_IN = {
    "ToySAE": "part4_toy_sae",
    "ToySAEConfig": "part4_toy_sae",
    "GatedToySAE": "part5_sae_variants",
    "JumpReLUToySAE": "part5_sae_variants",
    "JumpReLUToySAEConfig": "part5_sae_variants",
    "TopKToySAE": "part5_sae_variants",
    "TopKToySAEConfig": "part5_sae_variants",
    "BatchTopKToySAE": "part5_sae_variants",
    "variant_report": "part5_sae_variants",
    "HierarchyConfig": "part8_feature_absorption",
    "HierarchicalToyData": "part8_feature_absorption",
    "MatryoshkaToySAE": "part8_feature_absorption",
    "MatryoshkaToySAEConfig": "part8_feature_absorption",
    "doubling_prefixes": "part8_feature_absorption",
    "decoder_cosines": "part8_feature_absorption",
    "inference_acts": "part8_feature_absorption",
    "evaluation_features": "part8_feature_absorption",
    "parent_latents": "part8_feature_absorption",
    "absorption_rate": "part8_feature_absorption",
    "absorption_report": "part8_feature_absorption",
}
"""The reference module (under `part_utils.reference`) that defines each name the experiments look up."""


class Definitions:
    """What a notebook defines, by name: `definitions["GatedToySAE"]` is the notebook's own class.

    Looked up when used, so a notebook may define a name after handing over its namespace. A name
    the notebook lacks comes from the part that defines it, unless that is the calling part.
    """

    def __init__(self, namespace: Mapping[str, Any], *, part: int) -> None:
        self.namespace, self.part = namespace, part

    def __getitem__(self, name: str) -> Any:
        if name in self.namespace:
            return self.namespace[name]
        if name not in DEFINED_IN:
            raise KeyError(f"`{name}` is neither defined in this notebook nor known to part_utils.sae_registry")
        module = DEFINED_IN[name]
        if module.startswith(f"part{self.part}_"):
            raise LookupError(f"`{name}` belongs to Part {self.part}: run the notebook's cell that defines it first")
        return getattr(import_module(f"part_utils.reference.{module}"), name)


def doubling_prefixes_of(definitions: Definitions, model: nn.Module, d_sae: int) -> dict[str, Any]:
    """Matryoshka prefixes that double from the data's number of parents: 5, 10, 20, 40 for 5 parents."""
    return {"prefix_sizes": definitions["doubling_prefixes"](model.cfg.n_parents, d_sae)}


ConfigFields = Callable[[Definitions, nn.Module, int], dict[str, Any]]
"""Config fields that depend on the data or the width: (definitions, data model, d_sae) → fields."""


@dataclass(frozen=True)
class Architecture:
    """One architecture: its SAE and config classes, by name, and the config field its sweep varies."""

    sae_class: str
    config_class: str
    sparsity: str
    """The config field that each instance sets: "sparsity_coeff" (λ) or "k"."""
    whole_k: bool = False
    """TopK keeps exactly k latents, so its k is a whole number."""
    data_fields: ConfigFields | None = None
    """Config fields the architecture needs beyond the sizes and the setting (Matryoshka's prefixes)."""

    @property
    def symbol(self) -> str:
        return "λ" if self.sparsity == "sparsity_coeff" else "k"

    def config(
        self, config_class: type, per_instance: Sequence[float], *, d_in: int, d_sae: int, device: Any, **fields: Any
    ) -> Any:
        """The config of len(per_instance) instances, instance i at sparsity setting per_instance[i]."""
        if self.sparsity == "sparsity_coeff":
            setting: Any = torch.tensor(list(per_instance), dtype=torch.get_default_dtype(), device=device)
        else:
            setting = [int(k) if self.whole_k else k for k in per_instance]
        return config_class(n_inst=len(per_instance), d_in=d_in, d_sae=d_sae, **{self.sparsity: setting}, **fields)


ARCHITECTURES = {
    "L1": Architecture("ToySAE", "ToySAEConfig", "sparsity_coeff"),
    "Gated": Architecture("GatedToySAE", "ToySAEConfig", "sparsity_coeff"),
    "JumpReLU": Architecture("JumpReLUToySAE", "JumpReLUToySAEConfig", "sparsity_coeff"),
    "TopK": Architecture("TopKToySAE", "TopKToySAEConfig", "k", whole_k=True),
    "BatchTopK": Architecture("BatchTopKToySAE", "TopKToySAEConfig", "k"),
    "Matryoshka": Architecture("MatryoshkaToySAE", "MatryoshkaToySAEConfig", "k", data_fields=doubling_prefixes_of),
}


def setting_label(name: str, setting: float) -> str:
    """How tables and figures name a setting: "λ=0.1", "k=2"."""
    return f"{ARCHITECTURES[name].symbol}={setting:g}"


def setting_key(name: str, setting: float) -> str:
    """How the results file names a setting: "lam0.1", "k2"."""
    return f"{'lam' if ARCHITECTURES[name].sparsity == 'sparsity_coeff' else 'k'}{setting:g}"


def repeat_settings(settings: Sequence[float], n_per_setting: int) -> list[float]:
    """One setting per instance: each setting `n_per_setting` times in a row, one instance per seed."""
    return [setting for setting in settings for _ in range(n_per_setting)]


def freeze_decoder_bias(sae: nn.Module) -> None:
    """Keep `b_dec` where it starts, at the origin (Part 5 does this for TopK)."""
    sae.b_dec.requires_grad_(False)


def build_sae(
    name: str,
    per_instance: Sequence[float],
    model: nn.Module,
    definitions: Definitions,
    *,
    d_sae: int,
    config_changes: Mapping[str, Any] | None = None,
    set_up: Callable[[nn.Module], None] | None = None,
    sae_class: type | None = None,
) -> nn.Module:
    """One SAE of architecture `name` reading `model`, instance i at setting per_instance[i].

    `config_changes` override config fields, `set_up` adjusts the built SAE before training, and
    `sae_class` replaces the architecture's class by a variant that takes the same config.
    """
    architecture = ARCHITECTURES[name]
    fields = architecture.data_fields(definitions, model, d_sae) if architecture.data_fields else {}
    cfg = architecture.config(
        definitions[architecture.config_class],
        per_instance,
        d_in=model.cfg.d_hidden,
        d_sae=d_sae,
        device=model.W.device,
        **{**fields, **(config_changes or {})},
    )
    sae = (sae_class or definitions[architecture.sae_class])(cfg, model)
    if set_up is not None:
        set_up(sae)
    return sae
