"""Checks for Part 9 (transcoders and attribution graphs). Call them from the notebook, e.g.
`test_replacement_forward(replacement_forward)`.

Every check runs on a small random transformer (`_common`: 2 layers, 2 heads, d_model 12, d_head 5,
d_mlp 20, 16 latents, vocabulary 29, prompts of 7 tokens; non-zero biases, LayerNorm weights not 1)
through `run_and_record`, so none needs the trained model. Learner code gets float32 copies; what to
expect is computed in float64 from the originals, by the reference or by the float64 models beside the
checks (`_transcoder_model`, `_replacement_model`), whose variants are the misreadings each message names.

One module per exercise: `transcoder_forward` (2.1), `replacement_forward` (3.1), `attribute` (4.1),
`influence_and_prune` (5.1) and `intervention_effect` (7.1).
"""

from tests.checking import KINK_MARGIN
from tests.part9_attribution_graphs._common import dictionary_like, float64, random_prompt
from tests.part9_attribution_graphs._replacement_model import replacement_model
from tests.part9_attribution_graphs._transcoder_model import _kink_distances, transcoder_cases
from tests.part9_attribution_graphs.attribute import brute_force_edges, test_attribute
from tests.part9_attribution_graphs.influence_and_prune import prune_cases, test_influence, test_prune
from tests.part9_attribution_graphs.intervention_effect import test_intervention_effect
from tests.part9_attribution_graphs.replacement_forward import test_replacement_forward
from tests.part9_attribution_graphs.transcoder_forward import test_transcoder_forward

__all__ = [
    # The checks, in notebook order.
    "test_transcoder_forward",
    "test_replacement_forward",
    "test_attribute",
    "test_influence",
    "test_prune",
    "test_intervention_effect",
    # What the mutation suite (tests/suite/test_part9_checks.py) reads besides the checks.
    "KINK_MARGIN",
    "_kink_distances",
    "brute_force_edges",
    "dictionary_like",
    "float64",
    "prune_cases",
    "random_prompt",
    "replacement_model",
    "transcoder_cases",
]
