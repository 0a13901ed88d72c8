"""Causal-LM distillation on the tiny Llama: token windows, the top-k teacher cache, the top-k KD loss,
training (KD vs no-KD, resume), sequence-level KD generations and the LM metrics."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import BadInput
from edgekd.lm.data import token_windows
from edgekd.lm.losses import topk_kd_loss
from edgekd.lm.metrics import agreement_from_logits, evaluate_lm
from edgekd.lm.sequence_kd import teacher_generations
from edgekd.lm.tiny import tiny_causal_lm, tiny_tokenizer
from edgekd.lm.topk_cache import build_topk_cache
from edgekd.lm.train import LMTrainConfig, train_lm

TEXTS = [
    "The quick brown fox jumps over the lazy dog. A small model learns from a large one by matching its "
    "predictions, token by token, on real text.",
    "Edge devices run small language models: a phone, a camera, a car. Each has little memory and a tight "
    "budget for time to first token.",
    "Distillation keeps most of the teacher's quality at a fraction of its cost. The student sees the "
    "teacher's probabilities, not only the next word.",
    "Quantized weights take a quarter of the memory. Speculative decoding lets a small draft propose tokens "
    "that the large model checks in one pass.",
] * 3
SEQ_LEN = 32
K = 8


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def windows(tokenizer):
    return token_windows(tokenizer, TEXTS, seq_len=SEQ_LEN, max_tokens=24 * SEQ_LEN)


@pytest.fixture(scope="module")
def teacher(windows, tmp_path_factory):
    """The tiny Llama trained briefly on the text, so its next-token distribution is peaked and worth copying."""
    model = tiny_causal_lm(seed=0)
    config = LMTrainConfig(max_steps=40, lr=3e-3, warmup_steps=2, seed=0)
    return train_lm(model, windows, config=config, out_dir=tmp_path_factory.mktemp("teacher")).model


@pytest.fixture(scope="module")
def topk(teacher, windows, tmp_path_factory):
    return build_topk_cache(teacher, windows, k=K, cache_dir=tmp_path_factory.mktemp("topk"))


class Interrupted(Exception):
    """A run stopped from outside (what Ctrl-C or a lost machine would do)."""


class CountingLM(nn.Module):
    """A causal LM returning plain logits that counts its forwards and fails on forward number `fail_at`."""

    def __init__(self, inner: nn.Module, fail_at: int | None = None):
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise Interrupted
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def test_token_windows_joins_texts_with_eos_and_is_bounded(tokenizer):
    windows = token_windows(tokenizer, ["ab", "cd", "ef" * 40], seq_len=4, max_tokens=10)
    assert windows.dtype == np.int64 and windows.shape == (2, 4)  # 10 tokens allowed -> 2 full windows
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert windows.ravel().tolist() == ids("ab") + [tokenizer.eos_token_id] + ids("cd") + [tokenizer.eos_token_id] + ids("ef")
    again = token_windows(tokenizer, ["ab", "cd", "ef" * 40], seq_len=4, max_tokens=10)
    assert np.array_equal(windows, again)
    with pytest.raises(BadInput, match="seq_len=64"):
        token_windows(tokenizer, ["too short"], seq_len=64, max_tokens=1000)
    with pytest.raises(BadInput, match="max_tokens"):
        token_windows(tokenizer, ["text"], seq_len=2, max_tokens=0)


def _full_kl(teacher_logits, student_logits, temperature):
    log_p = F.log_softmax(teacher_logits / temperature, -1)
    log_q = F.log_softmax(student_logits / temperature, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature ** 2


def _topk_of(logits, k, temperature):
    scaled = logits / temperature
    values, indices = scaled.topk(k, dim=-1)
    return values, indices, torch.logsumexp(scaled, -1)


def test_topk_kd_loss_is_the_full_kl_at_k_equals_vocab_and_zero_on_a_match():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 100, generator=generator) * 3
    student = torch.randn(2, 5, 100, generator=generator, requires_grad=True)
    for temperature in (1.0, 2.0):
        full = _full_kl(teacher.double(), student.detach().double(), temperature)
        topk = topk_kd_loss(student, _topk_of(teacher, 100, temperature), temperature=temperature)
        assert abs(topk.item() - full.item()) < 1e-5
    same = topk_kd_loss(teacher, _topk_of(teacher, 8, 2.0), temperature=2.0)
    assert abs(float(same)) < 1e-6
    losses = {name: topk_kd_loss(student, _topk_of(teacher, 8, 2.0), temperature=2.0, divergence=name)
              for name in ("forward", "reverse", "jsd")}
    assert all(loss.item() > 0 for loss in losses.values())
    assert len({round(loss.item(), 5) for loss in losses.values()}) == 3
    for loss in losses.values():
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = True  # one position: the mean over the mask is that position's divergence
    one = topk_kd_loss(student, _topk_of(teacher, 8, 1.0), temperature=1.0, mask=mask)
    alone = topk_kd_loss(student[:1, 1:2], tuple(t[:1, 1:2] for t in _topk_of(teacher, 8, 1.0)), temperature=1.0)
    assert torch.allclose(one, alone)
    with pytest.raises(BadInput, match="divergence"):
        topk_kd_loss(student, _topk_of(teacher, 8, 1.0), temperature=1.0, divergence="kl")


def test_topk_cache_holds_the_teacher_top_k_resumes_and_is_reused(teacher, windows, tmp_path):
    cache = build_topk_cache(CountingLM(teacher), windows, k=K, temperature=2.0, cache_dir=tmp_path / "a",
                             batch_size=8)
    with torch.no_grad():
        logits = teacher(input_ids=torch.from_numpy(windows[:3])).logits / 2.0
    values, indices = logits.topk(K, dim=-1)
    logsumexp = torch.logsumexp(logits, -1)
    assert cache.log_probs.dtype == np.float16 and cache.indices.dtype == np.int32
    assert cache.log_probs.shape == (24, SEQ_LEN, K) and cache.logsumexp.shape == (24, SEQ_LEN)
    assert np.array_equal(cache.indices[:3], indices.numpy())
    assert np.allclose(cache.log_probs[:3], (values - logsumexp[..., None]).numpy(), atol=2e-3)
    assert np.allclose(cache.logsumexp[:3], logsumexp.numpy(), atol=1e-5)
    batch_values, _, _ = cache.batch([0, 2])  # logits / T again, as topk_kd_loss takes them
    assert torch.allclose(batch_values, values[[0, 2]], atol=1e-2)

    interrupted = CountingLM(teacher, fail_at=2)  # dies on its second batch: rows 0..7 are kept
    with pytest.raises(Interrupted):
        build_topk_cache(interrupted, windows, k=K, temperature=2.0, cache_dir=tmp_path / "b", batch_size=8)
    resumed_teacher = CountingLM(teacher)
    resumed = build_topk_cache(resumed_teacher, windows, k=K, temperature=2.0, cache_dir=tmp_path / "b", batch_size=8)
    assert resumed_teacher.calls == 2  # batches 2 and 3 of 3
    for name in ("log_probs", "indices", "logsumexp"):
        assert np.array_equal(getattr(resumed, name), getattr(cache, name))

    never = CountingLM(teacher, fail_at=1)
    again = build_topk_cache(never, windows, k=K, temperature=2.0, cache_dir=tmp_path / "b", batch_size=8)
    assert never.calls == 0 and again.directory == resumed.directory

    with open(again.directory / "log_probs.npy", "r+b") as handle:  # a truncated file is rebuilt, not trusted
        handle.truncate(1000)
    rebuilt_teacher = CountingLM(teacher)
    rebuilt = build_topk_cache(rebuilt_teacher, windows, k=K, temperature=2.0, cache_dir=tmp_path / "b", batch_size=8)
    assert rebuilt_teacher.calls == 3 and np.array_equal(rebuilt.log_probs, cache.log_probs)
    values_file = rebuilt.directory / "log_probs.npy"
    data = bytearray(values_file.read_bytes())
    data[-1] ^= 0xFF  # same shape, one value changed: the recorded digest catches it
    values_file.write_bytes(bytes(data))
    rebuilt_teacher = CountingLM(teacher)
    build_topk_cache(rebuilt_teacher, windows, k=K, temperature=2.0, cache_dir=tmp_path / "b", batch_size=8)
    assert rebuilt_teacher.calls == 3
    with pytest.raises(BadInput, match="k=200"):
        build_topk_cache(teacher, windows, k=200, cache_dir=tmp_path / "c")


def test_kd_training_lowers_kd_loss_and_raises_agreement(teacher, windows, topk, tmp_path):
    student = tiny_causal_lm(layers=2, seed=1)
    before = evaluate_lm(student, windows, teacher_topk=topk)
    config = LMTrainConfig(max_steps=60, lr=3e-3, warmup_steps=3, alpha=0.9, top_k=K, log_every=10)
    result = train_lm(student, windows, config=config, teacher_topk=topk, out_dir=tmp_path)
    after = evaluate_lm(result.model, windows, teacher_topk=topk)
    assert result.history[-1]["kd"] < 0.5 * result.history[0]["kd"]
    assert after["top1_agreement"] > before["top1_agreement"] + 0.2
    assert after["perplexity"] < before["perplexity"]
    no_kd = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=LMTrainConfig(**{**vars(config), "alpha": 0.0}),
                     teacher_topk=topk, out_dir=tmp_path / "no_kd")
    assert after["top1_agreement"] > evaluate_lm(no_kd.model, windows, teacher_topk=topk)["top1_agreement"] + 0.2
    assert result.history[-1]["kd"] < no_kd.history[-1]["kd"]  # the same steps without KD leave it higher
    assert [entry["step"] for entry in result.history] == [10, 20, 30, 40, 50, 60]
    assert result.history[0]["lr"] > result.history[-1]["lr"] > 0  # cosine decay after the warm-up


def test_alpha_zero_is_the_no_kd_baseline(windows, topk, tmp_path):
    config = LMTrainConfig(max_steps=6, lr=3e-3, alpha=0.0, top_k=K, log_every=3)
    with_cache = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=config, teacher_topk=topk,
                          out_dir=tmp_path / "a")
    baseline = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=config, out_dir=tmp_path / "b")
    for (name, a), b in zip(with_cache.model.state_dict().items(), baseline.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert with_cache.history[0]["kd"] > 0 and baseline.history[0]["kd"] is None  # the baseline's KD loss is logged
    kd = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=LMTrainConfig(**{**vars(config), "alpha": 0.5}),
                  teacher_topk=topk, out_dir=tmp_path / "c")
    assert not torch.equal(kd.model.model.norm.weight, baseline.model.model.norm.weight)


def test_resumed_training_ends_with_identical_weights(windows, topk, tmp_path):
    config = LMTrainConfig(max_steps=7, batch_size=5, lr=3e-3, warmup_steps=2, top_k=K, log_every=2)
    straight = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=config, teacher_topk=topk,
                        out_dir=tmp_path / "straight")

    def stop_at_3(step, total):
        if step == 3:
            raise Interrupted

    every_step = LMTrainConfig(**{**vars(config), "checkpoint_minutes": 0.0})
    with pytest.raises(Interrupted):
        train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=every_step, teacher_topk=topk,
                 out_dir=tmp_path / "split", progress=stop_at_3)
    steps = []
    resumed = train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=every_step, teacher_topk=topk,
                       out_dir=tmp_path / "split", resume=True, progress=lambda step, total: steps.append(step))
    assert steps == [4, 5, 6, 7]
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.history == straight.history
    with pytest.raises(BadInput, match="config"):
        train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=LMTrainConfig(**{**vars(config), "lr": 1e-3}),
                 teacher_topk=topk, out_dir=tmp_path / "split", resume=True)


def test_config_validation_names_the_key(windows, topk, tmp_path):
    for key, value in (("alpha", 1.5), ("divergence", "kl"), ("batch_size", 0), ("lr", float("nan"))):
        with pytest.raises(BadInput, match=f"'{key}'"):
            LMTrainConfig(**{key: value}).validate()
    with pytest.raises(BadInput, match="top_k=32"):  # the cache was built with k=8
        train_lm(tiny_causal_lm(layers=2, seed=1), windows, config=LMTrainConfig(max_steps=1), teacher_topk=topk,
                 out_dir=tmp_path)


def test_sequence_kd_generations_are_cached_resumed_and_trained_on(teacher, tokenizer, tmp_path, monkeypatch):
    prompts = ["The quick", "Edge devices", "A small model", "Distillation", "Quantized"]
    settings = dict(max_new_tokens=6, batch_size=2)
    straight = teacher_generations(teacher, tokenizer, prompts, cache_dir=tmp_path / "a", **settings)
    assert straight.settings["do_sample"] is False and len(straight.continuation_ids) == 5
    assert all(1 <= len(ids) <= 6 for ids in straight.continuation_ids)

    real_generate, calls = teacher.generate, []

    def generate_failing_on_call_2(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real_generate(**kwargs)

    monkeypatch.setattr(teacher, "generate", generate_failing_on_call_2)
    with pytest.raises(Interrupted):
        teacher_generations(teacher, tokenizer, prompts, cache_dir=tmp_path / "b", **settings)
    calls[:] = [1, 1]  # no more failures
    monkeypatch.setattr(teacher, "generate", lambda **kwargs: calls.append(1) or real_generate(**kwargs))
    resumed = teacher_generations(teacher, tokenizer, prompts, cache_dir=tmp_path / "b", **settings)
    assert len(calls) == 4  # shards 2 and 3 of 3; shard 1 was kept
    assert resumed.continuation_ids == straight.continuation_ids
    monkeypatch.setattr(teacher, "generate", lambda **kwargs: pytest.fail("a complete cache must be reused"))
    assert teacher_generations(teacher, tokenizer, prompts, cache_dir=tmp_path / "b", **settings).continuation_ids \
        == straight.continuation_ids
    monkeypatch.undo()

    sampled = [teacher_generations(teacher, tokenizer, prompts, do_sample=True, temperature=1.5, seed=3,
                                   cache_dir=tmp_path / name, **settings) for name in ("c", "d")]
    assert sampled[0].continuation_ids == sampled[1].continuation_ids  # seeded per shard
    assert sampled[0].directory.name != straight.directory.name

    tokens, mask = straight.training_sequences(max_len=12)
    prompt = tokenizer("The quick")["input_ids"]
    assert tokens[0, :len(prompt)].tolist() == prompt and not mask[0, :len(prompt)].any()
    assert mask[0].sum() == min(len(straight.continuation_ids[0]), 12 - len(prompt))
    student = tiny_causal_lm(layers=2, seed=1)
    result = train_lm(student, None, sequences=(tokens, mask), out_dir=tmp_path / "train",
                      config=LMTrainConfig(max_steps=30, batch_size=4, lr=3e-3, warmup_steps=2, log_every=10))
    assert result.history[-1]["ce"] < 0.5 * result.history[0]["ce"] and result.history[0]["kd"] is None
    with pytest.raises(BadInput, match="max_len=32"):
        train_lm(student, np.zeros((2, 32), dtype=np.int64), sequences=(tokens, mask), out_dir=tmp_path / "x",
                 config=LMTrainConfig(max_steps=1))


def test_evaluate_lm_perplexity_and_agreement(teacher, windows, topk):
    own = evaluate_lm(teacher, windows, teacher_topk=topk)
    assert own["top1_agreement"] == 1.0 and own["tokens"] == 24 * (SEQ_LEN - 1)
    random_student = evaluate_lm(tiny_causal_lm(layers=2, seed=1), windows)
    assert random_student["top1_agreement"] is None
    assert own["perplexity"] < random_student["perplexity"] / 2
    with torch.no_grad():
        logits = teacher(input_ids=torch.from_numpy(windows[:2])).logits
    assert agreement_from_logits(logits, topk.indices[:2, :, 0]) == 1.0
    assert agreement_from_logits(logits.numpy(), np.zeros((2, SEQ_LEN), dtype=np.int64)) < 0.5
