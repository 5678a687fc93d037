"""Absorption as it develops: Part 8's SAEs replayed from the weights they kept during training."""

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from part_utils.experiments.absorption_comparison import AbsorptionComparison
from part_utils.hierarchy import count_child_latents, decompose_latents
from part_utils.plotting.absorption import animate_absorption
from part_utils.sae_registry import setting_label

REPLAY_SAMPLES = 4_096
CHECKPOINTS = ("first", "quarter", "half", "last")
PRINTED_EARLY = (0, 25, 50)
PRINT_PERIOD = 200
"""The full-mode run resamples every 200 steps: the printout shows the steps halfway between resamplings."""

Frame = tuple[Tensor, Tensor, Tensor]
"""One instance at one recorded step: decoder cosines [d_sae, feats], live latents [d_sae], absorption [parents]."""


def replay_absorption(comparison: AbsorptionComparison, name: str, instance: int = 0) -> tuple[list[Frame], Tensor]:
    """The frames of one instance at every recorded step, and the mean absorption of every instance (seed) at
    every recorded step, [steps, inst]."""
    sae = copy.deepcopy(comparison.trained[name])
    features = comparison.features(sae, REPLAY_SAMPLES)
    frames, every_seed = [], []
    for state in comparison.recorders[name].states:
        sae.load_state_dict(state)
        report = comparison.definitions["absorption_report"](sae, features)
        frames.append((report["cosine"][instance], report["live"][instance], report["absorption"][instance]))
        every_seed.append(report["absorption"].mean(dim=-1))
    return frames, torch.stack(every_seed)


def show_replay(comparison: AbsorptionComparison, names: Sequence[str], setting: float) -> None:
    """Mean absorption over the seeds of `setting` at four steps of training, instance 0's child latents along
    the way, and the animation; records `replay.*`."""
    replays, absorption_by_step = {}, {}
    for name in names:
        replays[comparison.label(name, setting)], absorption_by_step[name] = replay_absorption(comparison, name)
    steps = comparison.recorders[names[0]].steps
    seeds = comparison.seeds_of(names[0], setting)
    seeds_at_setting = slice(seeds.start, seeds.stop)
    checkpoints = [steps[1], steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]]
    for name, by_step in absorption_by_step.items():
        means = " ".join(f"{step}: {by_step[steps.index(step), seeds_at_setting].mean():.2f}" for step in checkpoints)
        print(f"{comparison.label(name, setting)}, mean absorption over the {len(seeds)} seeds at steps {means}")
        for position, step in zip(CHECKPOINTS, checkpoints):
            at_step = by_step[steps.index(step), seeds_at_setting]
            comparison.results.record(f"replay.{name}.{position}.absorption", at_step)
            comparison.results.record(f"replay.{position}.step", step)
    tree = comparison.trained[names[0]].model.cfg
    for label, frames in replays.items():
        print(f"{label}, instance 0")
        for index, step in enumerate(steps):
            if step % PRINT_PERIOD == PRINT_PERIOD // 2 or step in (*PRINTED_EARLY, steps[-1]):
                cosine, live, absorption = frames[index]
                carrying, clean = count_child_latents(decompose_latents(cosine, live, tree.n_parents, tree.n_children))
                print(
                    f"  step {step:>4}: mean absorption {absorption.mean():.2f};"
                    f" child latents carrying the parent {carrying:>2}, clean {clean:>2}"
                )
    title = f"Absorption during training (instance 0, {setting_label(names[0], setting)})"
    animate_absorption(replays, steps, tree.n_parents, tree.n_children, title=title).show()
