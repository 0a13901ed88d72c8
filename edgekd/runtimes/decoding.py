"""The interface every causal-LM runner shares (PyTorch, ONNX Runtime, OpenVINO): feed tokens, get logits,
keep the KV cache. Generation, the export gate's greedy parity, the generation benchmark and speculative
decoding are written once against it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgekd.errors import BadInput


@dataclass
class DecoderState:
    """What a decoder has seen: `length` cached positions and the runner's own KV cache (`past`: per layer
    (key, value), each [batch, kv_heads, length, head_dim]; arrays or tensors, as the runner keeps them)."""

    length: int = 0
    past: list[Any] = field(default_factory=list)


class Decoder(Protocol):
    """A causal LM with a KV cache, batch 1."""

    name: str  # e.g. "pytorch", "onnxruntime", "openvino"
    vocab_size: int

    def start(self) -> DecoderState:
        """An empty cache."""

    def forward(self, token_ids: np.ndarray, state: DecoderState) -> tuple[np.ndarray, DecoderState]:
        """Append `token_ids` ([1, n] int64, n >= 1) after the cached positions: logits [1, n, vocab] float32
        for each of them, and the state with n more positions. `state` itself is not modified."""

    def truncate(self, state: DecoderState, length: int) -> DecoderState:
        """The state with only its first `length` positions (speculative decoding drops rejected drafts)."""


def checked_tokens(token_ids, state: DecoderState, *, vocab_size: int, max_positions: int | None) -> np.ndarray:
    """`token_ids` as [1, n] int64 after the checks every decoder makes: shape, vocabulary, and the positions
    the cache would hold (a typo must not grow it without bound)."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 1 or not np.issubdtype(ids.dtype, np.integer):
        raise BadInput(f"token_ids: expected integer ids of shape [1, n] with n >= 1, got {ids.dtype} "
                       f"{list(ids.shape)}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise BadInput(f"token_ids: ids must lie in [0, {vocab_size}) (the model's vocabulary), "
                       f"got {int(ids.min())}..{int(ids.max())}")
    if max_positions and state.length + ids.shape[1] > max_positions:
        raise BadInput(f"token_ids: {state.length} cached + {ids.shape[1]} new positions exceed the decoder's "
                       f"bound of {max_positions} positions (max_position_embeddings, or edgekd's own)")
    return ids.astype(np.int64)


def truncated(state: DecoderState, length: int) -> DecoderState:
    """`state` with its first `length` positions (the past's axis 2), for `Decoder.truncate`."""
    if not 0 <= length <= state.length:
        raise BadInput(f"truncate: length must be in [0, {state.length}] (the cached positions), got {length}")
    if length == 0:
        return DecoderState()
    return DecoderState(length, [(k[:, :, :length], v[:, :, :length]) for k, v in state.past])
