"""Datasets: specs with provenance and content hashes, deterministic splits, clear errors."""

import numpy as np
import pytest

from edgekd.data import UNLABELED, load_data
from edgekd.errors import BadInput


def test_digits_spec_is_real_split_and_hashed():
    data = load_data("digits")
    assert data.task == "classification" and data.num_classes == 10
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_train.dtype == np.float32
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 1797
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    again = load_data("digits")
    assert np.array_equal(data.x_test, again.x_test) and data.sha256 == again.sha256
    assert data.provenance["source"].startswith("sklearn.datasets.load_digits")


def test_upsampled_digits_share_the_snapshot():
    small, large = load_data("digits"), load_data("digits32")
    assert large.x_train.shape[1:] == (1, 32, 32)
    assert small.sha256 == large.sha256 and np.array_equal(small.y_test, large.y_test)


def test_labeled_fraction_marks_the_rest_unlabeled_per_class():
    data = load_data("digits", labeled_fraction=0.1)
    labeled = data.y_train >= 0
    assert 0.08 < labeled.mean() < 0.12
    assert set(np.unique(data.y_train[labeled])) == set(range(10))
    assert (data.y_train[~labeled] == UNLABELED).all()
    assert (data.y_test >= 0).all()


def test_npz_with_and_without_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(path, x=rng.normal(size=(40, 3)).astype(np.float32), y=rng.integers(0, 4, 40))
    data = load_data(path)
    assert data.task == "classification" and data.num_classes <= 4
    np.savez(path, x=rng.normal(size=(40, 3)).astype(np.float32))
    assert load_data(path).task == "embedding"


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": np.full((20, 3), np.nan, dtype=np.float32)}, "NaN or Inf"),
    ({"x": np.zeros((20, 3), np.float32), "y": np.zeros(19, np.int64)}, "'y' has 19"),
    ({"x": np.zeros((20, 3), np.float32), "y": np.zeros(20, np.float32)}, "integer class labels"),
    ({"z": np.zeros(3)}, "array named 'x'"),
    ({"x": np.zeros((0, 3), np.float32)}, "empty"),
])
def test_bad_npz_is_bad_input(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(BadInput, match=fragment):
        load_data(path)


def test_a_file_that_is_not_an_npz_archive_says_so(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello")
    with pytest.raises(BadInput, match="notes.npz: not an .npz archive"):
        load_data(path)


def test_text_file_one_sample_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"sentence number {i}" for i in range(30)) + "\n\n")
    data = load_data(path)
    assert data.task == "embedding" and data.is_text
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 30


def test_changed_snapshot_is_refused(tmp_path):
    spec = tmp_path / "digits-pinned.yaml"
    spec.write_text("name: digits-pinned\nloader: sklearn-digits\ntask: classification\ncontent_sha256: " + "0" * 64 + "\n")
    with pytest.raises(BadInput, match="content_sha256"):
        load_data(spec)


def test_unknown_data_names_the_known_specs(tmp_path):
    with pytest.raises(BadInput, match="digits"):
        load_data("no-such-dataset")
    with pytest.raises(BadInput, match="is a directory"):
        load_data(tmp_path)


def test_a_split_that_leaves_no_training_data_names_the_spec_key(tmp_path):
    spec = tmp_path / "greedy.yaml"
    spec.write_text("name: greedy\nloader: sklearn-digits\ntask: classification\n"
                    "split: {seed: 0, val_fraction: 0.9}\n")
    with pytest.raises(BadInput, match=r"greedy.yaml: key 'split'.*val_fraction 0.9 \+ test_fraction 0.2 leave no"):
        load_data(spec)


def test_fortunes_text_when_installed():
    from edgekd.data import FORTUNES_DIRS

    if not any(d.is_dir() for d in FORTUNES_DIRS):
        with pytest.raises(BadInput, match="apt-get install -y fortunes"):
            load_data("fortunes")
        return
    data = load_data("fortunes")
    assert data.task == "embedding" and len(data.x_train) > 1000
    assert all(isinstance(s, str) and len(s) >= 20 for s in data.x_test[:50])
