"""Speculative decoding with greedy verification, measured for real.

The draft (a distilled student) proposes `k` tokens one at a time; the target (the teacher) scores them all
in one forward over its KV cache. The longest prefix of drafts equal to the target's own argmax is kept,
plus the target's next token after it, so every target forward yields between 1 and k + 1 tokens and the
output is exactly the target's greedy output whatever the draft proposes. Its speed therefore depends only
on the acceptance rate and on how much cheaper a draft step is than a target step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgekd.errors import BadInput
from edgekd.lm.generate import EosIds, check_new_tokens, eos_set, greedy_decode, prompt_array
from edgekd.runtimes.decoding import Decoder, DecoderState

MAX_DRAFT_TOKENS = 64
"""Most drafts per verification: the target's verify forward grows with k, and acceptance falls
geometrically with it (0.5 per token gives under 1e-3 odds of accepting the 10th), so larger k buys nothing."""


@dataclass(frozen=True)
class SpeculativeResult:
    tokens: list[int]  # the new tokens, equal to the target's greedy output
    drafted: int  # draft tokens proposed
    accepted: int  # of those, equal to the target's argmax and kept
    target_forwards: int  # prefill included


def speculative_decode(draft: Decoder, target: Decoder, prompt_ids, max_new_tokens: int, *, k: int = 4,
                       eos_token_id: EosIds = None) -> SpeculativeResult:
    """The target's greedy continuation of `prompt_ids` (new tokens only, ending at the first EOS), with the
    draft proposing up to `k` tokens per target forward. Both decoders must share the tokenizer."""
    if draft.vocab_size != target.vocab_size:
        raise BadInput(f"speculative decoding: the draft's vocabulary ({draft.vocab_size}) differs from the "
                       f"target's ({target.vocab_size}); the draft must share the target's tokenizer")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_DRAFT_TOKENS:
        raise BadInput(f"speculative decoding: k must be a whole number in [1, {MAX_DRAFT_TOKENS}], got {k!r}")
    prompt = prompt_array(prompt_ids, target.vocab_size)
    budget, stop = check_new_tokens(max_new_tokens), eos_set(eos_token_id)
    if budget == 0:
        return SpeculativeResult([], 0, 0, 0)

    # Invariant between rounds: `sequence` is prompt + output; the target has cached all of it but the last
    # token (whose successor it has not scored yet); the draft has cached some prefix of it.
    logits, target_state = target.forward(prompt, target.start())
    sequence = [*prompt[0].tolist(), int(np.argmax(logits[0, -1]))]
    draft_state, drafted, accepted, forwards = draft.start(), 0, 0, 1

    def output() -> list[int]:
        return sequence[prompt.shape[1]:]

    while len(output()) < budget and sequence[-1] not in stop:
        proposals, draft_state = _propose(draft, draft_state, sequence, min(k, budget - len(output()) - 1))
        fed = sequence[target_state.length:] + proposals
        logits, target_state = target.forward(np.array([fed], dtype=np.int64), target_state)
        forwards += 1
        choices = np.argmax(logits[0, -(len(proposals) + 1):], axis=-1).tolist()
        kept = 0
        while kept < len(proposals) and proposals[kept] == choices[kept] and proposals[kept] not in stop:
            kept += 1
        if kept < len(proposals) and proposals[kept] == choices[kept]:  # an accepted EOS ends the output
            sequence += proposals[: kept + 1]
            kept += 1
        else:
            sequence += proposals[:kept] + [choices[kept]]
        drafted, accepted = drafted + len(proposals), accepted + kept
        target_state = target.truncate(target_state, len(sequence) - 1)
        draft_state = draft.truncate(draft_state, min(draft_state.length, len(sequence) - 1))
    return SpeculativeResult(output(), drafted, accepted, forwards)


def _propose(draft: Decoder, state: DecoderState, sequence: list[int], count: int) -> tuple[list[int], DecoderState]:
    """`count` greedy draft tokens after `sequence`, feeding the draft what it has not cached yet."""
    proposals: list[int] = []
    for _ in range(count):
        fed = (sequence + proposals)[state.length:]
        logits, state = draft.forward(np.array([fed], dtype=np.int64), state)
        proposals.append(int(np.argmax(logits[0, -1])))
    return proposals, state


def measure_speculative(draft: Decoder, target: Decoder, prompts, *, k: int = 4, new_tokens: int = 32,
                        draft_name: str, eos_token_id: EosIds = None) -> dict:
    """report.json's `speculative` entry: acceptance and tokens/s of speculative decoding over `prompts`,
    against the target's own greedy decoding of the same prompts (each prompt timed both ways in turn, so
    both see the same background load), and whether every output equals the target's."""
    prompts = list(prompts)
    if not prompts:
        raise BadInput("speculative decoding: no prompts to measure on")
    greedy_decode(target, prompts[0], 2)  # warm-up: first calls pay for allocation and dispatch caches
    speculative_decode(draft, target, prompts[0], 2, k=k)
    drafted = accepted = spec_tokens = greedy_tokens = 0
    spec_s = greedy_s = 0.0
    identical = True
    for prompt in prompts:
        start = time.perf_counter()
        reference = greedy_decode(target, prompt, new_tokens, eos_token_id=eos_token_id)
        middle = time.perf_counter()
        result = speculative_decode(draft, target, prompt, new_tokens, k=k, eos_token_id=eos_token_id)
        end = time.perf_counter()
        greedy_s, spec_s = greedy_s + middle - start, spec_s + end - middle
        greedy_tokens, spec_tokens = greedy_tokens + len(reference), spec_tokens + len(result.tokens)
        drafted, accepted = drafted + result.drafted, accepted + result.accepted
        identical = identical and result.tokens == reference
    return {
        "draft": draft_name,
        "k": int(k),
        "acceptance_rate": accepted / drafted if drafted else None,
        "tokens_per_s": spec_tokens / spec_s if spec_s > 0 else None,
        "teacher_tokens_per_s": greedy_tokens / greedy_s if greedy_s > 0 else None,
        "identical_output": identical,
    }
