"""Retrain the mirror model and write the weights the notebooks load.

    python -m part_utils.mirror.retrain

This is exactly how section_data/part9_mirror_model.pt was made (CPU, one thread, seed 0).
"""

import time

import torch

from part_utils.mirror.language import mirror_dataset
from part_utils.mirror.model import WEIGHTS_PATH, build_mirror_model, output_accuracy, train_mirror_model
from part_utils.seeding import seed_everything

if __name__ == "__main__":
    torch.set_num_threads(1)
    seed_everything(0)
    data = mirror_dataset()
    model = build_mirror_model(device=torch.device("cpu"))
    start = time.perf_counter()
    losses = train_mirror_model(model, data)
    print(f"trained in {time.perf_counter() - start:.0f} s; final loss {losses[-1]:.4f}")
    for position, accuracy in output_accuracy(model, data.test_tokens).items():
        print(f"held-out accuracy at position {position} (predicting token {position + 1}): {accuracy:.4f}")
    WEIGHTS_PATH.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS_PATH)
    print(f"saved {WEIGHTS_PATH}")
