"""The offline teacher cache: keyed by teacher weights and data, float16 unless that overflows,
written atomically, extended with only the arrays a later run adds."""

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.distill.cache import teacher_cache
from edgekd.errors import BadInput


class Scaled(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)
        self.scale = scale

    def forward(self, x):
        return self.head(self.body(x)) * self.scale


def open_cache(teacher, x, root, taps=()):
    return teacher_cache(teacher, x, taps=taps, collate=None, batch_size=16, root=root)


def test_cache_holds_float16_outputs_and_features_that_match_the_teacher(tmp_path):
    torch.manual_seed(0)
    teacher, x = Scaled(), np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    cache = open_cache(teacher, x, tmp_path, taps=["body"])
    assert cache.outputs.dtype == np.float16 and cache.outputs.shape == (40, 3)
    assert cache.features["body"].shape == (40, 8)
    outputs, features = cache.fetch(np.array([3, 7]), torch.device("cpu"))
    with torch.no_grad():
        expected = teacher(torch.from_numpy(x[[3, 7]]))
    assert outputs.dtype == torch.float32 and torch.allclose(outputs, expected, atol=2e-3)
    assert sorted(p.name for p in cache.directory.iterdir()) == ["feature.body.npy", "key.json", "outputs.npy"]


def test_cache_key_follows_the_teacher_weights_and_the_data(tmp_path):
    torch.manual_seed(0)
    teacher, x = Scaled(), np.ones((8, 4), dtype=np.float32)
    first = open_cache(teacher, x, tmp_path).directory
    assert open_cache(teacher, x, tmp_path).directory == first
    assert open_cache(teacher, x + 1, tmp_path).directory != first
    with torch.no_grad():
        teacher.head.bias.add_(1.0)
    assert open_cache(teacher, x, tmp_path).directory != first


def test_a_new_tap_adds_only_its_array(tmp_path):
    torch.manual_seed(0)
    teacher, x = Scaled(), np.ones((8, 4), dtype=np.float32)
    cache = open_cache(teacher, x, tmp_path)
    stamp = (cache.directory / "outputs.npy").stat().st_mtime_ns
    extended = open_cache(teacher, x, tmp_path, taps=["body.0"])
    assert (extended.directory / "outputs.npy").stat().st_mtime_ns == stamp
    assert extended.features["body.0"].shape == (8, 8)


def test_values_beyond_float16_are_kept_in_float32(tmp_path):
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    cache = open_cache(Scaled(scale=1e6), x, tmp_path)
    assert cache.outputs.dtype == np.float32 and np.isfinite(cache.outputs).all()


def test_nan_teacher_outputs_are_bad_input_and_leave_no_files(tmp_path):
    x = np.ones((8, 4), dtype=np.float32)
    with pytest.raises(BadInput, match="teacher outputs hold NaN/Inf on data samples 0..7"):
        open_cache(Scaled(scale=float("nan")), x, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_features_whose_shape_follows_the_batch_cannot_be_cached(tmp_path):
    class Padded(nn.Module):  # like a text encoder padding each batch to its longest sample
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(1, 2)

        def forward(self, x):
            length = int(x.max().item())
            return self.proj(torch.ones(len(x), length, 1)).mean(1)

    x = np.concatenate([np.full((16, 1), 3.0), np.full((4, 1), 5.0)]).astype(np.float32)
    with pytest.raises(BadInput, match="layer 'proj' change shape between batches .*set cache=False"):
        open_cache(Padded(), x, tmp_path, taps=["proj"])
