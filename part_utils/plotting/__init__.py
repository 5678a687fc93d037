"""Plotly figures for the workbook. Importing this package installs the offline renderer."""

from part_utils.plotting.animation import build_animation
from part_utils.plotting.features import animate_features_in_2d, plot_features_in_2d, plot_features_in_Nd
from part_utils.plotting.renderer import use_offline_renderer

use_offline_renderer()

__all__ = [
    "animate_features_in_2d",
    "build_animation",
    "plot_features_in_2d",
    "plot_features_in_Nd",
    "use_offline_renderer",
]
