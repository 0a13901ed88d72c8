"""Text -> model inputs: tokenizer loading, one-off pre-tokenization and the batch collate.

Texts can be tokenized once (`tokenize_texts`: an int64 id matrix padded with the tokenizer's pad
id) so training epochs only slice arrays; `TextCollate` turns either a batch of strings or a
batch of such ids into `input_ids` trimmed to the batch's longest text, so short batches do not
pay for 128 positions (`encode_batch` gives ids and mask for export and runtimes).
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


def encode_batch(*, tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH,
                 pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for `texts`; `pad_to` pads to a fixed length (benchmarks at 128)."""
    ids, mask = _pad(_encode(tokenizer, [str(t) for t in texts], max_length), tokenizer.pad_token_id, pad_to or 0)
    return torch.from_numpy(ids), torch.from_numpy(mask)
