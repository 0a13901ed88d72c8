"""Greedy generation over any `Decoder`: one loop for PyTorch and the exported runtimes, so the export gate
compares the runtimes' tokens, not two implementations of the loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional, Union

import numpy as np

from edgekd.errors import BadInput
from edgekd.runtimes.decoding import Decoder

EosIds = Union[int, Iterable[int], None]

MAX_NEW_TOKENS = 32768
"""Most tokens one call generates: a bound on the KV cache a typo can grow (no target asks for more)."""


def prompt_array(prompt_ids, vocab_size: Optional[int] = None) -> np.ndarray:
    """`prompt_ids` (a non-empty sequence of token ids) as a [1, n] int64 array, checked."""
    ids = np.asarray(prompt_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0 or not (np.issubdtype(ids.dtype, np.integer)):
        raise BadInput(f"prompt_ids: expected a non-empty list of integer token ids, got {ids.dtype} "
                       f"{list(ids.shape)}")
    if ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size):
        raise BadInput(f"prompt_ids: token ids must lie in [0, {vocab_size}), got {int(ids.min())}..{int(ids.max())}")
    return ids.astype(np.int64)[None]


def eos_set(eos_token_id: EosIds) -> frozenset[int]:
    """The stop tokens: one id, several (as HF generation configs allow), or none."""
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, (int, np.integer)):
        return frozenset({int(eos_token_id)})
    return frozenset(int(token) for token in eos_token_id)


def check_new_tokens(max_new_tokens) -> int:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise BadInput(f"max_new_tokens: expected a whole number in [0, {MAX_NEW_TOKENS}], got {max_new_tokens!r}")
    return int(max_new_tokens)


def greedy_decode(decoder: Decoder, prompt_ids, max_new_tokens: int, *, eos_token_id: EosIds = None) -> list[int]:
    """The argmax continuation of `prompt_ids`: the new tokens only, ending with the first EOS if one comes
    before `max_new_tokens`. Ties go to the lowest id (numpy's argmax), as in Hugging Face `generate`."""
    prompt = prompt_array(prompt_ids, decoder.vocab_size)
    budget, stop = check_new_tokens(max_new_tokens), eos_set(eos_token_id)
    tokens: list[int] = []
    if budget == 0:
        return tokens
    logits, state = decoder.forward(prompt, decoder.start())
    while True:
        token = int(np.argmax(logits[0, -1]))
        tokens.append(token)
        if len(tokens) >= budget or token in stop:
            return tokens
        logits, state = decoder.forward(np.array([[token]], dtype=np.int64), state)
