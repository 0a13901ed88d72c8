"""The export gate for generation: does the runtime generate what PyTorch generates?

Logits cosine on the prefill says the graph computes the same function; greedy decoding of each prompt for
`new_tokens` tokens, through the KV cache, says it generates the same text. One flipped argmax changes every
token after it, so the gate counts whole prompts: `greedy_token_match` is the fraction of prompts whose
tokens are identical, and it must reach `GREEDY_MATCH_MIN`. A prompt whose first differing token is one
PyTorch itself nearly tied (top-2 logits within `TIE_MARGIN`) counts as matching and is reported under
`ties`: any change of summation order breaks such a tie, and the sequences say nothing after it.

The gate runs the graph with the arithmetic it states (`open_decoder(exact=True)`): ONNX Runtime's CPU
default quantizes the activations of integer-weight MatMuls to int8 (4.5x the decode rate here), which no
weight-only PyTorch reference reproduces; what that costs is reported beside the gate as
`deployed_greedy_token_match`, and the ablation scores every variant as deployed.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from edgekd.errors import BadInput
from edgekd.lm.generate import greedy_decode, prompt_array
from edgekd.lm.torch_decoder import TorchDecoder
from edgekd.lm.weight_quant import dequantized_linears, unwrap
from edgekd.runtimes.decoders import open_decoder

GREEDY_MATCH_MIN = 0.95
"""Prompts (fraction) that must generate identical tokens. Not 1.0: an INT4 graph's fused kernels sum in a
different order than PyTorch, and a near-tie between two tokens can flip on one prompt of many."""
MAX_PROMPTS = 1024
PREFILL_COSINE_MIN = 0.999
"""Worst per-position cosine of the prefill logits: the graph computes PyTorch's function (the SmolLM2 quick run's
weight-INT8 student measured 0.9999999999998 on both runtimes with the graph's own arithmetic)."""
TIE_MARGIN = 0.01
"""Top-2 logit gap (nats) under which PyTorch's own choice is a coin toss: measured on the tiny test LM, a
weight-INT8 student diverged from ONNX Runtime at a gap of 0.0023 while its prefill cosine was 0.9999997."""


def generation_parity(model: nn.Module, onnx_or_xml_path, runtime: str, prompts: list[list[int]], *,
                      new_tokens: int = 32, reference_tokens: dict | None = None) -> dict:
    """{"prefill_logits_cosine": min over prompts, "greedy_token_match": fraction of prompts with identical
    greedy tokens, "prompts": n, "new_tokens": n} of `model` (PyTorch, as it is: fake-quantized if it is)
    against the exported graph on `runtime`. `reference_tokens`: a dict the caller keeps across the formats of
    one model, so PyTorch (the slow side) decodes each prompt once."""
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise BadInput(f"prompts: expected 1 to {MAX_PROMPTS} prompts, got {len(prompts) if prompts else 0}")
    with dequantized_linears(unwrap(model)):  # the same numbers, without re-rounding the weights at every token
        return _parity(model, onnx_or_xml_path, runtime, prompts, new_tokens=new_tokens,
                       reference_tokens=reference_tokens)


def _parity(model: nn.Module, onnx_or_xml_path, runtime: str, prompts: list[list[int]], *, new_tokens: int,
            reference_tokens: dict | None) -> dict:
    reference = TorchDecoder(model)
    runtime_decoder = open_decoder(onnx_or_xml_path, runtime, exact=True)
    if runtime_decoder.vocab_size != reference.vocab_size:
        raise BadInput(f"{onnx_or_xml_path}: vocabulary {runtime_decoder.vocab_size} != the model's "
                       f"{reference.vocab_size}: not an export of this model")
    known = reference_tokens if reference_tokens is not None else {}  # PyTorch's own tokens, shared across formats
    cosines, matches, ties, references = [], 0, 0, []
    for prompt in prompts:
        ids = prompt_array(prompt, reference.vocab_size)
        expected, _ = reference.forward(ids, reference.start())
        actual, _ = runtime_decoder.forward(ids, runtime_decoder.start())
        cosines.append(min(_cosine(e, a) for e, a in zip(expected[0], actual[0])))
        key = (tuple(ids[0].tolist()), new_tokens)
        if key not in known:
            known[key] = greedy_decode(reference, ids, new_tokens)
        wanted, got = known[key], greedy_decode(runtime_decoder, ids, new_tokens)
        references.append((ids, wanted))
        if wanted == got:
            matches += 1
        elif _tied_at_divergence(reference, ids, wanted, got):
            matches, ties = matches + 1, ties + 1
    deployed = open_decoder(onnx_or_xml_path, runtime)
    deployed_matches = sum(wanted == greedy_decode(deployed, ids, new_tokens) for ids, wanted in references)
    return {"prefill_logits_cosine": float(min(cosines)), "greedy_token_match": matches / len(prompts),
            "ties": ties, "prompts": len(prompts), "new_tokens": new_tokens,
            "deployed_greedy_token_match": deployed_matches / len(prompts)}


def _tied_at_divergence(reference: TorchDecoder, ids: np.ndarray, wanted: list[int], got: list[int]) -> bool:
    """Whether PyTorch's top-2 logits were within TIE_MARGIN where the two sequences first differ."""
    first = next((i for i, (a, b) in enumerate(zip(wanted, got)) if a != b), None)
    if first is None:  # one stopped (EOS) where the other went on: a real difference
        return False
    context = np.concatenate([ids, np.asarray([wanted[:first]], dtype=np.int64)], axis=1)
    logits, _ = reference.forward(context, reference.start())
    top2 = np.sort(logits[0, -1])[-2:]
    return bool(top2[1] - top2[0] < TIE_MARGIN)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))
