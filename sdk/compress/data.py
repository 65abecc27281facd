"""Real English text available offline: the documentation strings of the Python standard library.

Read from the standard library's source with `ast` (nothing is imported, so no module runs), split into
sentences and filtered to prose (no code, no doctest lines). Sentences are split into train and held-out by
*source file* (a stable hash of its name), so held-out sentences come from modules never trained on.
A text file with one sentence a line can be used instead (`--data FILE`).
"""
from __future__ import annotations

import ast
import functools
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from device_runtime.errors import UsageError

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "turtledemo", "ensurepip",
             "tkinter", "pydoc_data", "config-3.11-x86_64-linux-gnu"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9\)][.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'\"\-\(\)/]+[.]$")


@dataclass(frozen=True)
class Corpus:
    """Sentences for training and held-out evaluation, and where they came from."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "train_sentences": len(self.train), "heldout_sentences": len(self.heldout)}


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def sentences_from_docstring(doc: str) -> list[str]:
    """Prose sentences of one docstring: paragraphs without code, split at sentence ends, 6-40 words."""
    found = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        if any(l.lstrip().startswith((">>>", "...", "$", "#")) or l.startswith((" ", "\t")) for l in lines):
            continue  # doctests, shell lines, indented code or option lists
        text = " ".join(l.strip() for l in lines)
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.strip()
            words = sentence.split()
            if 6 <= len(words) <= 40 and _PROSE.match(sentence) and "::" not in sentence \
                    and sum(c.isalpha() for c in sentence) > 0.75 * len(sentence.replace(" ", "")):
                found.append(sentence)
    return found


@functools.lru_cache(maxsize=2)
def stdlib_corpus(heldout_every: int = 5) -> Corpus:
    """Sentences from the standard library's docstrings; files whose name hashes to 0 mod `heldout_every`
    are held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, heldout, seen = [], [], set()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        target = heldout if zlib.crc32(str(rel).encode()) % heldout_every == 0 else train
        for doc in _docstrings(path):
            for sentence in sentences_from_docstring(doc):
                if sentence not in seen:
                    seen.add(sentence)
                    target.append(sentence)
    if len(train) < 100 or len(heldout) < 20:
        raise RuntimeError(f"too little text in the standard library at {root}: {len(train)} + {len(heldout)}")
    return Corpus(tuple(train), tuple(heldout), f"docstrings of the Python standard library ({root})")


def file_corpus(path: str | Path, heldout_fraction: float = 0.1) -> Corpus:
    """One sentence a line; every 1/heldout_fraction-th line (by a stable hash of the line) is held out."""
    lines = [l.strip() for l in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = list(dict.fromkeys(l for l in lines if l))
    every = max(2, round(1 / heldout_fraction))
    train = tuple(l for l in lines if zlib.crc32(l.encode()) % every)
    heldout = tuple(l for l in lines if not zlib.crc32(l.encode()) % every)
    if not train or not heldout:
        raise UsageError(f"{path}: need at least a few lines of text to train and evaluate on")
    return Corpus(train, heldout, str(path))


def get_corpus(data: str | Path | Corpus | Sequence[str] | None) -> Corpus:
    if isinstance(data, Corpus):
        return data
    if data is None:
        return stdlib_corpus()
    if isinstance(data, (str, Path)):
        return file_corpus(data)
    sentences = list(data)
    return Corpus(tuple(sentences[len(sentences) // 10:]), tuple(sentences[: max(1, len(sentences) // 10)]),
                  "sentences given in the call")


def tokenize_batch(spec, sentences: Sequence[str], max_len: int | None = None) -> dict[str, np.ndarray]:
    """Tokenise with the spec's own preprocessing, stack, and trim the padding to the longest sentence."""
    from models_zoo.data import tokenize

    prep = dict(spec.preprocessing())
    if max_len is not None:
        prep["seq_len"] = max_len
    feeds = [tokenize(s, prep) for s in sentences]
    batch = {k: np.concatenate([f[k] for f in feeds]) for k in prep["input_names"]}
    longest = int(batch["attention_mask"].sum(axis=1).max())
    return {k: np.ascontiguousarray(v[:, :longest]) for k, v in batch.items()}


def batches(spec, sentences: Sequence[str], batch_size: int, max_len: int, seed: int = 0,
            shuffle: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Endless stream of token batches (reshuffled each epoch when `shuffle`)."""
    rng = np.random.default_rng(seed)
    sentences = list(sentences)
    while True:
        order = rng.permutation(len(sentences)) if shuffle else np.arange(len(sentences))
        for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
            yield tokenize_batch(spec, [sentences[i] for i in order[start:start + batch_size]], max_len)
