"""Text training batches: like-length texts under a token budget, the trainer's `batches` hook, the
teacher cache under such batches, and resuming a text KD run from a mid-epoch checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.data import Dataset
from edgekd.distill import DistillConfig, distill
from edgekd.distill.distributed import DistInfo, epoch_batches
from edgekd.distill.trainer import STATE_FILE, Stage, TrainData, Trainer
from edgekd.errors import BadInput
from edgekd.hf import TextCollate, encoder_kd_config, layer_student, load_sentence_encoder, load_tokenizer
from edgekd.hf.text import TokenBudgetBatches, token_budget_batches, token_lengths

from test_hf import SENTENCES, write_sentence_model  # the tiny BERT and its word-level tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = write_sentence_model(tmp_path_factory.mktemp("tiny-minilm"))
    return load_sentence_encoder(path=directory), load_tokenizer(path=directory)


def corpus(n: int, seed: int = 0) -> np.ndarray:
    """In-vocabulary texts of 1 to 24 words: lengths as uneven as real text's."""
    rng = np.random.default_rng(seed)
    words = " ".join(SENTENCES).split()
    return np.array([" ".join(rng.choice(words, size=int(rng.integers(1, 25)))) for _ in range(n)])


def padded(batches, lengths) -> int:
    return sum(len(b) * int(lengths[b].max()) for b in batches)


def skewed_lengths(n: int = 3000) -> np.ndarray:
    """Token counts shaped like fortunes': mostly short, a long tail cut at 128."""
    return np.minimum(3 + np.random.default_rng(1).geometric(1 / 30, size=n), 128)


def test_every_text_once_within_the_budget_and_far_less_padding_than_random_batches():
    lengths = skewed_lengths()
    lengths[7] = 5000  # longer than the whole budget on its own
    tokens = 32 * int(lengths.mean())
    batches = token_budget_batches(lengths, tokens=tokens, chunk=64 * 32, seed=0, epoch=0)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(len(lengths)))
    over = [b for b in batches if len(b) * lengths[b].max() > tokens]
    assert [b.tolist() for b in over] == [[7]]
    random = epoch_batches(len(lengths), batch_size=32, seed=0, epoch=0, info=DistInfo())
    assert padded(random, lengths) > 2.5 * padded(batches, lengths)
    assert 0.9 * len(random) < len(batches) < 1.3 * len(random)  # about the steps of batch_size random batches


def test_batches_are_deterministic_by_seed_and_new_each_epoch():
    lengths = skewed_lengths(500)
    make = lambda seed, epoch: [b.tolist() for b in token_budget_batches(lengths, tokens=400, chunk=256,  # noqa: E731
                                                                         seed=seed, epoch=epoch)]
    assert make(0, 0) == make(0, 0)
    assert make(0, 0) != make(0, 1) and make(0, 0) != make(1, 0)


def test_token_lengths_are_the_widths_text_collate_pads_to(tiny):
    _, tokenizer = tiny
    texts = corpus(20)
    lengths = token_lengths(tokenizer=tokenizer, texts=texts, max_length=12)
    collate = TextCollate(tokenizer=tokenizer, max_length=12)
    assert [collate(texts[i:i + 1]).shape[1] for i in range(len(texts))] == lengths.tolist()
    from edgekd.hf import tokenize_texts

    ids = tokenize_texts(tokenizer=tokenizer, texts=texts, max_length=12)
    assert np.array_equal(token_lengths(tokenizer=tokenizer, texts=ids, max_length=12), lengths)
    grouping = TokenBudgetBatches(tokenizer=tokenizer, max_length=12)
    assert repr(grouping) == repr(TokenBudgetBatches(tokenizer=tokenizer, max_length=12))  # no address: resumable
    assert "max_length=12" in repr(collate)


def text_data(n: int = 160) -> Dataset:
    texts = corpus(n + 40, seed=3)
    return Dataset("toy", "embedding", texts[:n], None, texts[n:n + 20], None, texts[n + 20:], None, None, "toy")


class TokenCounter:
    """Forward pre-hook: the input_ids positions (padded) and real tokens of every training forward."""

    def __init__(self, pad_id: int):
        self.pad_id, self.padded, self.real = pad_id, 0, 0

    def __call__(self, module, args):
        if module.training:
            self.padded += args[0].numel()
            self.real += int((args[0] != self.pad_id).sum())


def test_text_kd_trains_on_bucketed_batches_with_less_padding(tiny, tmp_path):
    teacher, tokenizer = tiny
    data = text_data()
    counted = {}
    for grouping in ("bucketed", "random"):
        student = layer_student(teacher=teacher, num_layers=2).model
        config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, epochs=2, batch_size=16,
                                   lr=3e-3, **({"batches": None} if grouping == "random" else {}))
        assert isinstance(config.batches, TokenBudgetBatches) == (grouping == "bucketed")
        counted[grouping] = counter = TokenCounter(tokenizer.pad_token_id)
        student.register_forward_pre_hook(counter)
        result = distill(student=student, teacher=teacher, data=data, config=config, out_dir=tmp_path / grouping,
                         progress=False)
        assert np.isfinite(result.history[-1]["loss"]) and result.metrics["spearman"] > 0
    assert counted["bucketed"].real == pytest.approx(counted["random"].real, rel=0.2)  # same texts, mix_text'ed
    assert counted["bucketed"].padded < 0.8 * counted["random"].padded
    assert counted["bucketed"].padded < 1.3 * counted["bucketed"].real


def test_cached_teacher_embeddings_are_fetched_by_sample_index_under_bucketed_batches(tiny, tmp_path):
    """Pooled-only KD without augmentation reads the teacher from its fp16 cache, row = sample index: the
    same run with the teacher live takes the same steps (fp16 rounding apart)."""
    teacher, tokenizer = tiny
    data = text_data()
    runs = {}
    for cache in (True, False):
        student = layer_student(teacher=teacher, num_layers=2).model
        config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, hidden_weight=0.0,
                                   attention_weight=0.0, augment=False, epochs=2, batch_size=16, lr=3e-3)
        assert config.cache and isinstance(config.batches, TokenBudgetBatches)
        config.cache = cache
        runs[cache] = distill(student=student, teacher=teacher, data=data, config=config, out_dir=tmp_path / str(cache),
                              progress=False)
    entries = sorted((tmp_path / "True" / "teacher_cache").iterdir())  # training and validation texts
    assert sorted(json.loads((e / "key.json").read_text())["samples"] for e in entries) == [20, len(data.x_train)]
    for entry in entries:
        assert sorted(p.name for p in entry.glob("*.npy")) == ["outputs.npy"]  # no hint features: their weights are 0
        assert np.load(entry / "outputs.npy", mmap_mode="r").dtype == np.float16
    for cached, live in zip(runs[True].history, runs[False].history):
        assert cached["loss"] == pytest.approx(live["loss"], abs=1e-3)


def test_hint_terms_only_where_their_weight_is_nonzero(tiny):
    teacher, tokenizer = tiny
    config = encoder_kd_config(student=layer_student(teacher=teacher, num_layers=2).model, teacher=teacher,
                               tokenizer=tokenizer, hidden_weight=1.0, attention_weight=0.0)
    assert [t.name for t in config.losses] == ["cosine", "mse", "mse"] and not config.cache


def test_text_kd_resumes_mid_epoch_to_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    teacher, tokenizer = tiny
    data = text_data(96)

    class Interrupt(Exception):
        pass

    def run(out_dir, *, stop_after: int | None = None, resume: bool = False):
        student = layer_student(teacher=teacher, num_layers=2).model
        config = encoder_kd_config(student=student, teacher=teacher, tokenizer=tokenizer, epochs=2, batch_size=16,
                                   lr=3e-3, checkpoint_minutes=0)
        if stop_after is not None:
            steps = iter(range(stop_after))

            def stop(module, args):
                if module.training and next(steps, None) is None:
                    raise Interrupt

            student.register_forward_pre_hook(stop)
        return distill(student=student, teacher=teacher, data=data, config=config, out_dir=out_dir, resume=resume,
                       progress=False)

    whole = run(tmp_path / "whole")
    steps = whole.history[0]["steps"]
    with pytest.raises(Interrupt):
        run(tmp_path / "split", stop_after=steps + 2)  # two steps into the second epoch
    state = torch.load(tmp_path / "split" / "checkpoints" / STATE_FILE, weights_only=True)
    assert state["epoch"] == 0 and state["within"]["epoch"] == 1 and state["within"]["steps"] == 2
    resumed = run(tmp_path / "split", resume=True)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]


def trainer_for(x: np.ndarray, config: DistillConfig, info: DistInfo = DistInfo()) -> Trainer:
    stage = Stage("probe", [nn.Linear(1, 1)], [], teacher=None)
    return Trainer(stage, TrainData(x, None, x[:2], None, "embedding"), config, resume=False, progress=False, info=info)


def test_grouped_batches_are_dealt_out_evenly_over_ranks():
    x = np.arange(50)
    config = DistillConfig(batches=lambda x, *, batch_size, seed, epoch: np.array_split(np.arange(len(x)), 5))
    per_rank = [trainer_for(x, config, DistInfo(world_size=2, rank=r))._epoch(0).batches for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 3
    assert set(np.concatenate(per_rank[0] + per_rank[1]).tolist()) == set(range(50))


def test_a_grouping_that_loses_a_sample_is_refused():
    config = DistillConfig(batches=lambda x, *, batch_size, seed, epoch: [np.arange(len(x) - 1)])
    with pytest.raises(BadInput, match="key 'batches'.*each of the 10 training samples once"):
        trainer_for(np.arange(10), config)._epoch(0)


def test_array_training_keeps_random_batches_augmented_batch_by_batch():
    x = np.zeros((40, 1, 4, 4), dtype=np.float32)
    epoch = trainer_for(x, DistillConfig(batch_size=8, augment=True))._epoch(3)
    assert epoch.x is x and epoch.augment is not None
    assert [b.tolist() for b in epoch.batches] == [
        b.tolist() for b in epoch_batches(40, batch_size=8, seed=0, epoch=3, info=DistInfo())]


def test_a_recipe_sets_the_checkpoint_interval_but_not_the_grouping_code():
    from edgekd.distill import config_from_mapping

    with pytest.raises(BadInput, match="unknown key 'batches'"):
        config_from_mapping({"batches": "length"})
    assert config_from_mapping({"checkpoint_minutes": 5}).checkpoint_minutes == 5
