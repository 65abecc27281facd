"""Real labelled tasks built from data already on the machine, small enough for CI: what shows what a precision
does to accuracy, which random-init weights cannot.

- `digits_task`: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797 real 8x8
  scans of 10 classes, from the UCI optical recognition set), upsampled to images the zoo's vision models take.
  The zoo's tiny MobileViT is fine-tuned on a train split in well under a minute and saved as a state dict with a
  10-class head (the user's own checkpoint: `export mobilevit_xxs --tiny --weights FILE` reads its head size);
  the held-out split is written as an image folder with one subfolder per class, which `export --eval` reads.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

# Each 8x8 scan (values 0..16) is scaled to 0..255 and resized to this square before the model's own
# preprocessing (resize, centre crop, normalise), exactly as a photo of a digit would be.
DIGIT_PIXELS = 72


@dataclass
class DigitsTask:
    checkpoint: Path  # the fine-tuned state dict (10-class head)
    eval_dir: Path  # held-out images, one subfolder per class ("0".."9")
    train_samples: int
    eval_samples: int
    pytorch_top1: float  # the fine-tuned model's top-1 on the held-out split, in PyTorch


def _digit_images():
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for scan in digits.images:
        grey = Image.fromarray(np.clip(scan / 16.0 * 255.0, 0, 255).astype(np.uint8))
        images.append(grey.resize((DIGIT_PIXELS, DIGIT_PIXELS), Image.BILINEAR).convert("RGB"))
    return images, digits.target.astype(np.int64)


def digits_task(root: str | Path, model: str = "mobilevit_xxs-tiny", epochs: int = 5, train_fraction: float = 0.78,
                seed: int = 0) -> DigitsTask:
    """Fine-tune `model` (a zoo vision spec) on the digits' train split; write its checkpoint and the held-out
    image folder under `root` (see the module docstring)."""
    import torch

    from models_zoo.data import preprocess_image
    from models_zoo.spec import get_model

    root = Path(root)
    spec = replace(get_model(model), num_classes=10)
    prep = spec.preprocessing()
    images, labels = _digit_images()
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(len(labels) * train_fraction)
    train, held_out = order[:cut], order[cut:]
    for i in held_out:  # the eval folder: what a user's validation set looks like
        folder = root / "eval" / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        images[i].save(folder / f"digit{i:04d}.png")
    features = np.concatenate([preprocess_image(np.asarray(images[i]), prep) for i in range(len(labels))])
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    torch.manual_seed(seed)
    module = spec.build().train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=3e-3, weight_decay=0.01)
    shuffle = np.random.default_rng(seed + 1)
    for _ in range(epochs):
        epoch = train[shuffle.permutation(len(train))]
        for start in range(0, len(epoch), 64):
            batch = torch.from_numpy(epoch[start:start + 64])
            loss = torch.nn.functional.cross_entropy(module(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()
    with torch.no_grad():
        top1 = float((module(x[torch.from_numpy(held_out)]).argmax(1) == y[torch.from_numpy(held_out)]).float().mean())
    checkpoint = root / f"{spec.name}-digits.pth"
    torch.save(module.state_dict(), checkpoint)
    return DigitsTask(checkpoint, root / "eval", len(train), len(held_out), top1)
