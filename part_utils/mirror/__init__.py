"""Part 9's task: the mirror language (first half mirrored through a letter map) and its two-layer model."""

from part_utils.mirror.analysis import mirrored_attention, mlp_ablation_accuracy
from part_utils.mirror.language import (
    END_POSITION,
    HALF_LENGTH,
    LETTER_MAP,
    LETTER_MAP_SEED,
    OUTPUT_POSITIONS,
    SEQUENCE_LENGTH,
    apply_letter_map,
    ground_truth,
    mirror,
    mirror_dataset,
    mirrored_source_position,
)
from part_utils.mirror.model import (
    WEIGHTS_PATH,
    build_mirror_model,
    load_mirror_model,
    mirror_model_config,
    output_accuracy,
    train_mirror_model,
)

__all__ = [
    "END_POSITION",
    "HALF_LENGTH",
    "LETTER_MAP",
    "LETTER_MAP_SEED",
    "OUTPUT_POSITIONS",
    "SEQUENCE_LENGTH",
    "WEIGHTS_PATH",
    "apply_letter_map",
    "build_mirror_model",
    "ground_truth",
    "load_mirror_model",
    "mirror",
    "mirror_dataset",
    "mirror_model_config",
    "mirrored_attention",
    "mirrored_source_position",
    "mlp_ablation_accuracy",
    "output_accuracy",
    "train_mirror_model",
]
