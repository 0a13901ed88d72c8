"""The PyTorch decoder, greedy generation, speculative decoding and the generation benchmark, on the tiny LM."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.bench.generation import bench_generation, bench_generation_interleaved
from edgekd.bench.slo import check_slo
from edgekd.errors import BadInput
from edgekd.lm.generate import greedy_decode
from edgekd.lm.speculative import measure_speculative, speculative_decode
from edgekd.lm.tiny import tiny_causal_lm
from edgekd.lm.torch_decoder import TorchDecoder
from edgekd.targets import Slo

NEW_TOKENS = 12


def varied_lm(*, layers: int = 4, seed: int = 0):
    """The tiny LM with its matrices redrawn at std 0.3: at the default init (0.02) it repeats one token
    forever, which would make every token-for-token comparison (and any draft's acceptance) trivial."""
    model = tiny_causal_lm(layers=layers, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module")
def target():
    return TorchDecoder(varied_lm())


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(4, 100, size=int(rng.integers(8, 17))).tolist() for _ in range(3)]


def hf_greedy(model, prompt, new_tokens, eos_token_id):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=eos_token_id, pad_token_id=3)
    return out[0, len(prompt):].tolist()


def test_greedy_decode_equals_hf_generate(target, prompts):
    outputs = []
    for prompt in prompts:
        ours = greedy_decode(target, prompt, NEW_TOKENS, eos_token_id=2)
        assert ours == hf_greedy(target.model, prompt, NEW_TOKENS, 2)
        outputs.append(ours)
    assert len({tuple(o) for o in outputs}) == len(prompts) and len(set(outputs[0])) > 3  # a real test: varied


def test_greedy_decode_stops_after_eos(target, prompts):
    free = greedy_decode(target, prompts[0], NEW_TOKENS)
    eos = free[4]
    stopped = greedy_decode(target, prompts[0], NEW_TOKENS, eos_token_id=eos)
    assert stopped == free[: free.index(eos) + 1] == hf_greedy(target.model, prompts[0], NEW_TOKENS, eos)
    assert greedy_decode(target, prompts[0], NEW_TOKENS, eos_token_id=[999, eos]) == stopped
    assert greedy_decode(target, prompts[0], 0) == []


def test_decoder_cache_matches_full_forward_and_leaves_state_alone(target):
    ids = np.arange(10, 24)[None]
    with torch.no_grad():
        full = target.model(torch.as_tensor(ids)).logits.numpy()
    empty = target.start()
    first, state = target.forward(ids[:, :5], empty)
    rest, after = target.forward(ids[:, 5:], state)
    assert (empty.length, state.length, after.length) == (0, 5, 14)
    assert first.dtype == np.float32 and rest.shape == (1, 9, target.vocab_size)
    np.testing.assert_allclose(np.concatenate([first, rest], axis=1), full, atol=1e-4)
    again, _ = target.forward(ids[:, 5:], state)  # `state` was not modified by the first call
    np.testing.assert_array_equal(again, rest)
    cropped = target.truncate(after, 5)
    assert cropped.length == 5 and after.length == 14
    np.testing.assert_array_equal(target.forward(ids[:, 5:], cropped)[0], rest)
    assert target.truncate(after, 0).length == 0


def test_decoder_rejects_bad_input_and_unwraps_hf(target):
    with pytest.raises(BadInput, match=r"\[1, n\]"):
        target.forward(np.zeros((2, 3), dtype=np.int64), target.start())
    with pytest.raises(BadInput, match="vocabulary"):
        target.forward(np.array([[target.vocab_size]]), target.start())
    with pytest.raises(BadInput, match="max_position_embeddings"):
        target.forward(np.zeros((1, 513), dtype=np.int64), target.start())
    with pytest.raises(BadInput, match="truncate"):
        target.truncate(target.start(), 1)
    with pytest.raises(BadInput, match="prompt_ids"):
        greedy_decode(target, [], 4)

    class Wrapper(torch.nn.Module):
        def __init__(self, hf):
            super().__init__()
            self.hf = hf

    assert TorchDecoder(Wrapper(target.model)).model is target.model


@pytest.mark.parametrize("k", [1, 4, 20])
def test_speculative_with_the_target_as_draft_accepts_everything(target, prompts, k):
    result = speculative_decode(target, target, prompts[0], NEW_TOKENS, k=k)
    assert result.tokens == greedy_decode(target, prompts[0], NEW_TOKENS)
    assert result.accepted == result.drafted > 0
    # prefill, then up to k + 1 tokens per verification (the last round drafts only what the budget needs)
    assert result.target_forwards == 1 + -(-(NEW_TOKENS - 1) // (k + 1)) < NEW_TOKENS


def test_speculative_with_a_random_draft_is_still_exact(target, prompts):
    draft = TorchDecoder(varied_lm(layers=1, seed=7))
    for prompt in prompts:
        result = speculative_decode(draft, target, prompt, NEW_TOKENS, k=3)
        assert result.tokens == greedy_decode(target, prompt, NEW_TOKENS)
        assert 0 <= result.accepted < result.drafted
    eos = greedy_decode(target, prompts[1], NEW_TOKENS)[5]
    expected = greedy_decode(target, prompts[1], NEW_TOKENS, eos_token_id=eos)
    for d in (draft, target):  # EOS from the target's own token, and as an accepted draft
        assert speculative_decode(d, target, prompts[1], NEW_TOKENS, k=4, eos_token_id=eos).tokens == expected
    with pytest.raises(BadInput, match="k must be"):
        speculative_decode(draft, target, prompts[0], 4, k=0)


def test_measure_speculative(target, prompts):
    draft = TorchDecoder(varied_lm(layers=1, seed=7))
    report = measure_speculative(draft, target, prompts, k=3, new_tokens=8, draft_name="layers:1")
    assert set(report) == {"draft", "k", "acceptance_rate", "tokens_per_s", "teacher_tokens_per_s",
                           "identical_output"}
    assert report["draft"] == "layers:1" and report["k"] == 3 and report["identical_output"] is True
    assert 0.0 <= report["acceptance_rate"] < 1.0
    assert report["tokens_per_s"] > 0 and report["teacher_tokens_per_s"] > 0
    itself = measure_speculative(target, target, prompts[:1], k=3, new_tokens=8, draft_name="teacher")
    assert itself["acceptance_rate"] == 1.0 and itself["identical_output"] is True


def test_bench_generation_figures(target, prompts):
    figures = bench_generation(target, prompts, new_tokens=8, repeats=2, warmup=1)
    report = figures.as_dict()
    assert report["prompt_tokens"] == round(np.mean([len(p) for p in prompts])) and report["new_tokens"] == 8
    assert 0 < report["ttft_ms"]["p50"] <= report["ttft_ms"]["p95"]
    assert report["decode_tokens_per_s"] > 0 and report["runs"] == 6
    assert report["peak_memory_mb"] is None or report["peak_memory_mb"] >= 0
    assert any("p95 is close to the maximum" in w for w in report["warnings"])
    for bad in ({"new_tokens": 1}, {"new_tokens": 4, "repeats": 0}):
        with pytest.raises(BadInput, match="generation benchmark"):
            bench_generation(target, prompts, **bad)
    with pytest.raises(BadInput, match=r"prompts\[1\]"):
        bench_generation(target, [[5, 6], [target.vocab_size]], new_tokens=4)


def test_interleaved_generation_takes_turns_and_times_each_decoder(target, prompts):
    order = []

    class Recorded:  # the decoder, noting whose turn each prefill is
        def __init__(self, name):
            self.name, self.vocab_size = name, target.vocab_size

        def start(self):
            return target.start()

        def forward(self, ids, state):
            if state.length == 0:
                order.append(self.name)
            return target.forward(ids, state)

    figures = bench_generation_interleaved({"a": Recorded("a"), "b": Recorded("b")}, prompts, new_tokens=4,
                                           repeats=2, warmup=0)
    assert order == ["a", "b"] * (2 * len(prompts))  # every prompt by each in turn, A B A B
    for name in ("a", "b"):
        report = figures[name].as_dict()
        assert report["runs"] == 2 * len(prompts) and report["decode_tokens_per_s"] > 0
        assert report["peak_memory_mb"] is None  # one process holds both: not separable
    with pytest.raises(BadInput, match="no decoders"):
        bench_generation_interleaved({}, prompts, new_tokens=4)


def test_generation_figures_meet_or_fail_the_slo(target, prompts):
    figures = bench_generation(target, prompts[:1], new_tokens=4, repeats=1, warmup=0)
    loose = check_slo(slo=Slo(ttft_ms_p95=1e6, decode_tokens_per_s_min=1e-3), figures=figures.slo_figures)
    assert loose.verdict == "pass" and [c.key for c in loose.checks] == ["ttft_ms_p95", "decode_tokens_per_s_min"]
    tight = check_slo(slo=Slo(ttft_ms_p95=1e-6, decode_tokens_per_s_min=1e9), figures=figures.slo_figures)
    assert tight.verdict == "fail" and [c.ok for c in tight.checks] == [False, False]
    assert "over the limit: ttft_ms_p95" in tight.reason and "under the floor: decode_tokens_per_s_min" in tight.reason
    assert check_slo(slo=Slo(ttft_ms_p95=5), figures={}).verdict == "not-measured"


def test_bench_layer_does_not_import_lm():
    source = Path(__file__).resolve().parents[1] / "edgekd" / "bench" / "generation.py"
    nodes = list(ast.walk(ast.parse(source.read_text())))
    imported = {node.module for node in nodes if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name.startswith("edgekd.lm") for name in imported)
