"""Token windows: the real text a causal LM is distilled and evaluated on.

Texts are tokenized without special tokens, joined with the EOS token (so a document's end is a token the
student learns to predict, as the teacher saw it in pretraining) and cut into full windows of `seq_len`
tokens; the ragged tail is dropped so every window is a full-length row of one array (no padding, no masks).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from edgekd.errors import BadInput

MAX_SEQ_LEN = 1 << 16
MAX_TOKENS = 1 << 30  # 8 GiB of int64 ids: anything larger is a typo, not a corpus


def token_windows(tokenizer, texts: Iterable[str], *, seq_len: int = 128, max_tokens: int) -> np.ndarray:
    """int64 [n, seq_len] windows over `texts` (tokenized in order, EOS between texts), at most
    `max_tokens` tokens in all; texts past the budget are not even tokenized. Deterministic."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 2 <= seq_len <= MAX_SEQ_LEN:
        raise BadInput(f"seq_len must be an integer in [2, {MAX_SEQ_LEN}] (a window predicts its own next "
                       f"tokens), got {seq_len!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
        raise BadInput(f"max_tokens must be an integer in [1, {MAX_TOKENS}], got {max_tokens!r}")
    if isinstance(texts, str):
        raise BadInput("texts must be a list of strings, not one string (it would be read character by character)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise BadInput("the tokenizer has no EOS token: texts are joined with it")
    budget = max_tokens - max_tokens % seq_len
    ids: list[int] = []
    for i, text in enumerate(texts):
        if len(ids) >= budget:
            break
        if not isinstance(text, str):
            raise BadInput(f"texts[{i}] is a {type(text).__name__}, not a string")
        if ids:
            ids.append(eos)
        # A text can be long: cut it to the characters the remaining budget could use (no tokenizer makes
        # fewer than one token per 64 characters of ordinary text) so one huge text cannot blow up memory.
        ids.extend(tokenizer(text[:64 * (budget - len(ids)) + 64], add_special_tokens=False)["input_ids"])
    n = min(len(ids), budget) // seq_len
    if n == 0:
        raise BadInput(f"the texts give {len(ids)} tokens, not one full window of seq_len={seq_len} "
                       f"(max_tokens={max_tokens}): give more text or a smaller seq_len")
    return np.asarray(ids[:n * seq_len], dtype=np.int64).reshape(n, seq_len)
