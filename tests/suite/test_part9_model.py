"""Part 9's planted-algorithm task and model: the mirror language, its split, and the shipped weights."""

import functools
import string

import pytest
import torch

from part_utils.mirror import (
    LETTER_MAP,
    OUTPUT_POSITIONS,
    SEQUENCE_LENGTH,
    apply_letter_map,
    build_mirror_model,
    ground_truth,
    load_mirror_model,
    mirror,
    mirror_dataset,
    mirrored_attention,
    mirrored_source_position,
    mlp_ablation_accuracy,
    output_accuracy,
    train_mirror_model,
)

CPU = torch.device("cpu")


@functools.cache
def model():
    return load_mirror_model(device=CPU)


@functools.cache
def data():
    return mirror_dataset()


def test_letter_map_is_a_derangement():
    assert sorted(LETTER_MAP) == list(string.ascii_lowercase)
    assert all(LETTER_MAP[i] != letter for i, letter in enumerate(string.ascii_lowercase))
    assert apply_letter_map("abc") == LETTER_MAP[:3]


def test_positions_and_sources():
    assert SEQUENCE_LENGTH == 9 and OUTPUT_POSITIONS == (4, 5, 6)
    assert [mirrored_source_position(p) for p in OUTPUT_POSITIONS] == [3, 2, 1]
    with pytest.raises(ValueError, match="not an output position"):
        mirrored_source_position(7)


def test_split_covers_every_string_once():
    split = data()
    assert len(split.train_tokens) + len(split.test_tokens) == 26**3 and len(split.test_tokens) == 3515
    train = set(split.tokenizer.decode(split.train_tokens))
    test = set(split.tokenizer.decode(split.test_tokens))
    assert not train & test and len(train | test) == 26**3
    assert all(text == mirror(text[1:4]) for text in test)


def test_ground_truth_agrees_with_the_strings():
    tokens = data().test_tokens[:50]
    mirrored, target = ground_truth(tokens)
    for text, xs, fxs in zip(data().tokenizer.decode(tokens), mirrored.tolist(), target.tolist(), strict=True):
        letters = string.ascii_lowercase
        assert [letters[x] for x in xs] == [text[mirrored_source_position(p)] for p in OUTPUT_POSITIONS]
        assert [letters[fx] for fx in fxs] == [text[p + 1] for p in OUTPUT_POSITIONS]


def test_shipped_model_completes_held_out_strings():
    accuracy = output_accuracy(model(), data().test_tokens)
    assert all(value >= 0.99 for value in accuracy.values()), accuracy


def test_layer_0_fetches_and_mlp_0_applies_the_map():
    tokens = data().test_tokens[:1000]
    assert (mirrored_attention(model(), tokens)[0, 0] > 0.95).all()
    ablated = mlp_ablation_accuracy(model(), tokens, layer=0, positions=OUTPUT_POSITIONS)
    assert all(ablated[p] < 0.2 for p in OUTPUT_POSITIONS), ablated


def test_training_is_deterministic():
    def short_training() -> dict[str, torch.Tensor]:
        fresh = build_mirror_model(seed=0, device=CPU)
        train_mirror_model(fresh, data(), steps=3)
        return fresh.state_dict()

    first, second = short_training(), short_training()
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)
