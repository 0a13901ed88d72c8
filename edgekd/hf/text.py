"""Text -> model inputs: tokenizer loading, one-off pre-tokenization and the batch collate.

Texts can be tokenized once (`tokenize_texts`: an int64 id matrix padded with the tokenizer's pad
id) so training epochs only slice arrays; `TextCollate` turns either a batch of strings or a
batch of such ids into `input_ids` trimmed to the batch's longest text, so short batches do not
pay for 128 positions (`encode_batch` gives ids and mask for export and runtimes). Training groups
texts of like length (`TokenBudgetBatches`), so a batch's longest text is near its others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekd.errors import BadInput
from edgekd.hf_files import SAFE_LOAD
from edgekd.hf.encoder import read_layout

DEFAULT_MAX_LENGTH = 128
INPUT_NAMES = ("input_ids", "attention_mask")
DYNAMIC_DIMS = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUT_NAMES}

CHUNK_BATCHES = 64
"""Batches' worth of shuffled texts sorted by length together. Measured on the 10.6k training fortunes
(all-MiniLM-L6-v2 tokenizer, batch_size 32): random batches pad to 3.25x the real tokens; chunks of
64 batches leave 1.022x (16: 1.071x, the whole corpus: 1.004x), while each epoch still mixes texts
into new batches."""


def load_tokenizer(*, path: str | Path):
    """The tokenizer saved with a local HF / sentence-transformers model; it must define a pad token."""
    from transformers import AutoTokenizer

    path = Path(path)
    tokenizer_dir = read_layout(path).transformer_dir if path.is_dir() else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, **SAFE_LOAD)
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{tokenizer_dir}: cannot load a tokenizer: {str(err).splitlines()[0][:200]}") from None
    if tokenizer.pad_token_id is None:
        raise BadInput(f"{tokenizer_dir}: the tokenizer defines no pad token; batching texts needs one")
    return tokenizer


def _encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    if max_length < 2:
        raise BadInput(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
    return tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]


def _pad(rows: list[list[int]], pad_id: int, length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) padded on the right to max(length, longest row)."""
    length = max(length, max(map(len, rows), default=0))
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def token_lengths(*, tokenizer, texts: np.ndarray, max_length: int = DEFAULT_MAX_LENGTH) -> np.ndarray:
    """Tokens per text, special tokens included and cut at `max_length`: the row a batch pads to its longest.
    `texts` as `TextCollate` takes them: strings, or an id matrix from `tokenize_texts`."""
    texts = np.asarray(texts)
    if texts.dtype.kind in ("i", "u") and texts.ndim == 2:
        return np.minimum((texts != tokenizer.pad_token_id).sum(1), max_length)
    return np.array([len(ids) for ids in _encode(tokenizer, [str(t) for t in texts], max_length)], dtype=np.int64)


def token_budget_batches(lengths: np.ndarray, *, tokens: int, chunk: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index batches of at most `tokens` padded tokens each (rows x longest; a text longer than that is a
    batch of its own): a seeded shuffle cut into chunks of `chunk` texts, each chunk sorted by length and
    filled greedily, and the batches shuffled, so every epoch pairs texts anew yet pads little."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    for begin in range(0, len(order), chunk):
        part = order[begin:begin + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        first = 0
        for i, length in enumerate(lengths[part]):  # ascending: the text added is the batch's longest
            if i > first and (i - first + 1) * length > tokens:
                batches.append(part[first:i])
                first = i
        batches.append(part[first:])
    return [batches[i] for i in rng.permutation(len(batches))]


def _tokenizer_name(tokenizer) -> str:
    return f"{type(tokenizer).__name__} vocab {len(tokenizer)}"


def tokenize_texts(*, tokenizer, texts: Sequence[str] | np.ndarray, max_length: int = DEFAULT_MAX_LENGTH) -> np.ndarray:
    """All `texts` as one int64 id matrix [N, longest], padded with the pad id: tokenize once, slice per batch."""
    return _pad(_encode(tokenizer, [str(t) for t in texts], max_length), tokenizer.pad_token_id)[0]


class TextCollate:
    """Batch of strings, or of ids from `tokenize_texts`, -> input_ids LongTensor [B, longest].

    Only the ids are returned: a `SentenceEncoder` derives the attention mask from the padding
    (encoder tokenizers never emit the pad token inside a text), so training loops that call
    `model(collate(batch))` with one argument work unchanged.
    """

    def __init__(self, *, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id)

    def __repr__(self) -> str:  # stable across processes: part of resume fingerprints and teacher-cache keys
        return f"TextCollate({_tokenizer_name(self.tokenizer)}, max_length={self.max_length})"

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        batch = np.asarray(batch)
        if batch.dtype.kind in ("U", "S", "O"):
            ids = tokenize_texts(tokenizer=self.tokenizer, texts=batch, max_length=self.max_length)
        elif batch.dtype.kind in ("i", "u") and batch.ndim == 2:
            ids = batch[:, :self.max_length]
        else:
            raise BadInput(f"text batch: expected strings or a 2-D integer id array, got dtype {batch.dtype} "
                           f"shape {batch.shape}")
        longest = int((ids != self.pad_id).sum(1).max(initial=1))
        return torch.from_numpy(np.ascontiguousarray(ids[:, :longest], dtype=np.int64))


class TokenBudgetBatches:
    """`DistillConfig.batches` for text: batches of like-length texts holding about `batch_size` x the
    corpus's mean tokens each (`token_budget_batches`), so an epoch takes about as many steps as random
    batches of batch_size, and a step costs about the same whatever its texts. A KD epoch on mix_text'ed
    fortunes then computes 3.25x fewer padded tokens (1.04 per real token; random batches of 32: 3.40) at
    3.1x the texts/s (benchmarks/text_throughput.py)."""

    def __init__(self, *, tokenizer, max_length: int = DEFAULT_MAX_LENGTH, chunk_batches: int = CHUNK_BATCHES):
        self.tokenizer, self.max_length, self.chunk_batches = tokenizer, max_length, chunk_batches
        self._measured: tuple[np.ndarray | None, np.ndarray] = (None, np.zeros(0, dtype=np.int64))

    def lengths(self, texts: np.ndarray) -> np.ndarray:
        """Token lengths of `texts`, kept for the last texts asked: unaugmented, every epoch asks for the same ones."""
        if self._measured[0] is not texts:
            self._measured = (texts, token_lengths(tokenizer=self.tokenizer, texts=texts, max_length=self.max_length))
        return self._measured[1]

    def __call__(self, texts: np.ndarray, *, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
        lengths = self.lengths(texts)
        return token_budget_batches(lengths, tokens=max(1, round(batch_size * float(lengths.mean()))),
                                    chunk=self.chunk_batches * batch_size, seed=seed, epoch=epoch)

    def __repr__(self) -> str:
        return (f"TokenBudgetBatches({_tokenizer_name(self.tokenizer)}, max_length={self.max_length}, "
                f"chunk_batches={self.chunk_batches})")


def encode_batch(*, tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH,
                 pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for `texts`; `pad_to` pads to a fixed length (benchmarks at 128)."""
    ids, mask = _pad(_encode(tokenizer, [str(t) for t in texts], max_length), tokenizer.pad_token_id, pad_to or 0)
    return torch.from_numpy(ids), torch.from_numpy(mask)
