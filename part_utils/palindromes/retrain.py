"""Retrain the palindrome model and write the weights the notebooks load.

    python -m part_utils.palindromes.retrain

This is exactly how section_data/part6_palindrome_model.pt was made (CPU, seed 0).
"""

import torch

from part_utils.palindromes.language import palindrome_dataset
from part_utils.palindromes.model import WEIGHTS_PATH, build_palindrome_model, mirrored_accuracy, train_palindrome_model
from part_utils.seeding import seed_everything

if __name__ == "__main__":
    seed_everything(0)
    data = palindrome_dataset()
    model = build_palindrome_model(device=torch.device("cpu"))
    losses = train_palindrome_model(model, data)
    print(
        f"final loss {losses[-1]:.4f}; "
        f"mirrored-half accuracy on held-out strings {mirrored_accuracy(model, data.test_tokens):.4f}"
    )
    WEIGHTS_PATH.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS_PATH)
    print(f"saved {WEIGHTS_PATH}")
