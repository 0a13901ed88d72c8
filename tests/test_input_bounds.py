"""A bad input must not take the host down: every read, allocation and run length is bounded,
and what exceeds a bound is a BadInput (exit 2) naming the file, key or flag at fault."""

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import edgekd.data
from edgekd.bench.core import benchmark
from edgekd.bench.feeds import MAX_FEED_ELEMENTS, build_feeds, parse_dims
from edgekd.bench.artifact import Artifact, InputSpec
from edgekd.data import MAX_LINE_CHARS, check_data_ref, content_hash, load_data
from edgekd.distill.config import config_from_mapping
from edgekd.errors import BadInput
from edgekd.recipe import load_recipe
from edgekd.targets import load_target, read_bounded, read_yaml

ROOT = Path(__file__).resolve().parent.parent
DEVICE = Path("/dev/zero")
needs_dev_zero = pytest.mark.skipif(not DEVICE.exists(), reason="no /dev/zero on this host")


def cli(capsys, *args: str) -> tuple[int, str]:
    from edgekd.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err.replace("\n", "")


def write_npz(path: Path, y=None, n: int = 40) -> Path:
    x = np.random.default_rng(0).random((n, 3)).astype(np.float32)
    np.savez(path, x=x, **({} if y is None else {"y": np.asarray(y)}))
    return path


# 1. Only regular files are read, and never more than a documented size.

@needs_dev_zero
@pytest.mark.parametrize("loader", ["text-lines", "npz"])
def test_a_spec_path_to_a_device_is_refused_unread(tmp_path, loader):
    spec = tmp_path / "zero.yaml"
    spec.write_text(f"name: zero\nloader: {loader}\ntask: embedding\npath: {DEVICE}\n")
    with pytest.raises(BadInput, match="/dev/zero: not a regular file"):
        load_data(spec)


@needs_dev_zero
def test_data_and_yaml_flags_refuse_devices_and_symlinks_to_them(tmp_path, capsys):
    link = tmp_path / "lines.txt"
    link.symlink_to(DEVICE)
    with pytest.raises(BadInput, match="not a regular file"):
        load_data(link)
    with pytest.raises(BadInput, match="not a regular file"):
        check_data_ref(DEVICE)
    code, err = cli(capsys, "bench", "model.onnx", "--target", str(DEVICE))
    assert code == 2 and "/dev/zero: not a regular file" in err and "Traceback" not in err


def test_oversized_files_are_refused_naming_the_file(tmp_path, monkeypatch):
    text = tmp_path / "big.txt"
    text.write_text("a sentence\n" * 100)
    monkeypatch.setattr(edgekd.data, "MAX_TEXT_BYTES", 100)
    with pytest.raises(BadInput, match=r"big\.txt: .*a text dataset may be at most"):
        load_data(text)
    monkeypatch.setattr(edgekd.data, "MAX_NPZ_BYTES", 100)
    with pytest.raises(BadInput, match=r"arrays\.npz: .*an \.npz dataset may be at most"):
        load_data(write_npz(tmp_path / "arrays.npz"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("# padding\n" * 200_000)
    with pytest.raises(BadInput, match=r"recipe\.yaml: .*a YAML file may be at most 1\.0 MiB"):
        load_recipe(recipe)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="no /proc")
def test_a_file_whose_size_lies_is_read_only_up_to_the_bound():
    assert Path("/proc/self/status").stat().st_size == 0  # yet it holds a kilobyte
    with pytest.raises(BadInput, match="status: holds more than"):
        read_bounded(Path("/proc/self/status"), max_bytes=16, kind="a test file")


def test_npz_arrays_that_claim_a_huge_shape_are_refused_before_loading(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 3)})
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue())  # a header and no data: 12 TB claimed
    with pytest.raises(BadInput, match=r"bomb\.npz: arrays 'x' decompress to 11,175.9 GiB"):
        load_data(path)


def test_a_zero_dimensional_x_is_bad_input(tmp_path):
    path = tmp_path / "scalar.npz"
    np.savez(path, x=np.float32(1))
    with pytest.raises(BadInput, match="'x' is a single value"):
        load_data(path)


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{k}: &{k} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, k in zip("abcdefgh", "bcdefghi")), "aliases (*name) expand to more than 1,000,000 values"),
    ("[" * 50_000, "nested too deeply"),
])
def test_yaml_that_expands_without_end_is_refused(tmp_path, text, fragment):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=rf"bomb\.yaml: .*{fragment.replace('(', '.').replace(')', '.')}"):
        read_yaml(path)


# 2. Text is held as Python strings, one sample per line of bounded length.

def test_one_huge_line_is_refused_naming_its_line_number(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n" + "x" * (MAX_LINE_CHARS + 1) + "\n")
    with pytest.raises(BadInput, match=rf"corpus\.txt: line 3 has {MAX_LINE_CHARS + 1:,} characters"):
        load_data(path)


def test_text_is_an_object_array_and_hashes_like_the_same_texts_in_any_dtype(tmp_path):
    texts = [f"sentence {i} " + "word " * (i % 7) for i in range(30)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(texts) + "\n")
    data = load_data(path)
    assert data.is_text and data.x_train.dtype == object and data.input_shape == ()
    assert all(isinstance(t, str) for t in data.x_test)
    assert content_hash(np.array(texts)) == content_hash(np.array(texts, dtype=object))
    assert content_hash(np.array(texts, dtype=object)) != content_hash(np.array(texts[:-1], dtype=object))
    assert data.sha256 == content_hash(np.array([t.strip() for t in texts], dtype=object))


# 3. Benchmark feeds and timing options are bounded before anything runs or is allocated.

def test_dim_sizes_past_the_feed_bound_are_refused():
    for value in ("100000000000", "9" * 5000, str(MAX_FEED_ELEMENTS + 1)):
        with pytest.raises(BadInput, match=r"--dim 'seq=.*': SIZE may be at most 268,435,456"):
            parse_dims([f"seq={value}"])
    for value in ("1e11", "²", "0", "-3"):
        with pytest.raises(BadInput, match="expected NAME=SIZE"):
            parse_dims([f"seq={value}"])
    assert parse_dims(["seq=0128"]) == {"seq": 128}


def test_feeds_from_huge_shapes_name_the_input_and_its_shape():
    static = Artifact(Path("big.onnx"), "onnx", (), (InputSpec("pixels", (1, 3, 65536, 65536), np.dtype(np.float32)),),
                      quantized=False)
    with pytest.raises(BadInput, match=r"big\.onnx: input 'pixels' of shape \[1, 3, 65536, 65536\]"):
        build_feeds(artifact=static, batch_size=1)
    dynamic = Artifact(Path("text.onnx"), "onnx", (), (InputSpec("input_ids", ("batch", "seq"), np.dtype(np.int64)),),
                       quantized=False)
    with pytest.raises(BadInput, match=r"input 'input_ids' of shape \[4096, 100000\]"):
        build_feeds(artifact=dynamic, batch_size=4096, dynamic_dims={"seq": 100_000})
    with pytest.raises(BadInput, match="dynamic dim 'seq': size must be a positive integer of at most"):
        build_feeds(artifact=dynamic, batch_size=1, dynamic_dims={"seq": 10**11})
    with pytest.raises(BadInput, match=r"input 'input_ids' of shape \[4096, 100000\]"):
        build_feeds(artifact=dynamic, batch_size=4096, inputs=np.ones((1, 100_000), np.int64))


@pytest.mark.parametrize("options, fragment", [
    ({"time_budget_s": float("inf")}, "time budget (--time)"),
    ({"time_budget_s": float("nan")}, "time budget (--time)"),
    ({"time_budget_s": 1e308}, "time budget (--time)"),
    ({"min_iterations": 10**12}, "iterations (--iterations)"),
    ({"warmup": 10**12}, "warmup (--warmup)"),
    ({"top_layers": -1}, "top_layers (--top)"),
])
def test_timing_options_that_would_never_end_are_refused_up_front(options, fragment):
    from edgekd.targets import parse_target

    target = parse_target({"name": "t", "device": "cpu", "runtime": "onnxruntime",
                           "runtime_device": "CPUExecutionProvider", "precision": "fp32"}, source="test")
    with pytest.raises(BadInput) as err:
        benchmark(model="absent.onnx", target=target, **options)
    assert fragment in str(err.value)


@pytest.mark.parametrize("flags, fragment", [
    (["--time", "inf"], "time budget (--time)"),
    (["--time", "nan"], "time budget (--time)"),
    (["--dim", "seq=100000000000"], "--dim 'seq=100000000000'"),
])
def test_bench_cli_exits_2_on_unbounded_flags(capsys, flags, fragment):
    code, err = cli(capsys, "bench", "absent.onnx", "--target", "x86-cpu-onnxruntime", *flags)
    assert code == 2 and fragment in err and "Traceback" not in err


# 4. Recipe, distill and profile values that cannot end or overflow late are refused by key.

@pytest.mark.parametrize("recipe, key", [
    ({"distill": {"epochs": 10**9}}, "'epochs'"),
    ({"distill": {"lr": float("inf")}}, "'lr'"),
    ({"distill": {"temperature": 1e308}}, "'temperature'"),
    ({"distill": {"seed": 2**63}}, "'seed'"),
    ({"distill": {"losses": [{"name": "fitnets", "weight": 1e300}]}}, "'losses[0].weight'"),
    ({"distill": {"num_workers": 10**6}}, "'num_workers'"),
    ({"seed": 2**63}, "key 'seed'"),
    ({"seed": -1}, "key 'seed'"),
    ({"bench": {"time_budget_s": 1e308}}, "key 'bench.time_budget_s'"),
    ({"bench": {"time_budget_s": float("inf")}}, "key 'bench.time_budget_s'"),
    ({"bench": {"min_iterations": 10**12}}, "key 'bench.min_iterations'"),
    ({"quant": {"epochs": 10**9}}, "key 'quant.epochs'"),
    ({"quant": {"lr": float("nan")}}, "key 'quant.lr'"),
    ({"prune": {"steps": 10**6}}, "key 'prune.steps'"),
])
def test_recipe_values_that_never_end_name_the_key(tmp_path, recipe, key):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    assert str(path) in str(err.value) and key in str(err.value)


def test_the_bundled_recipe_profiles_and_specs_still_validate():
    load_recipe(None)
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        load_recipe(recipe)
    for profile in (ROOT / "targets").glob("*.yaml"):
        load_target(profile)
    config_from_mapping({"epochs": 10_000, "lr": 10.0, "temperature": 100.0, "seed": 2**32 - 1, "patience": 10_000})


def test_infinite_slo_values_name_the_profile_key(tmp_path):
    data = yaml.safe_load((ROOT / "targets/x86-cpu-openvino.yaml").read_text())
    for section, key in (("slo", "latency_p95_ms"), ("slo", "peak_memory_mb"), ("peak", "int8_tops")):
        path = tmp_path / "my-cpu.yaml"
        path.write_text(yaml.safe_dump({**data, "name": "my-cpu", section: {**data[section], key: float("inf")}}))
        with pytest.raises(BadInput, match=rf"my-cpu\.yaml: key '{section}\.{key}'"):
            load_target(path)


def test_a_spec_seed_outside_numpy_range_names_the_key(tmp_path):
    spec = tmp_path / "seeded.yaml"
    spec.write_text(f"name: seeded\nloader: sklearn-digits\ntask: classification\nsplit: {{seed: {2**63}}}\n")
    with pytest.raises(BadInput, match=r"seeded\.yaml: key 'split\.seed'"):
        load_data(spec)
    spec.write_text("name: seeded\nloader: sklearn-digits\ntask: classification\noptions: {resize: 100000}\n")
    with pytest.raises(BadInput, match=r"seeded\.yaml: key 'options\.resize' must be an integer in \[8, 256\]"):
        load_data(spec)


# 5. A classification dataset needs two labelled classes.

@pytest.mark.parametrize("labels, fragment", [
    (np.zeros(40, np.int64), "the labels hold only class 0"),
    (np.where(np.arange(40) % 2, 3, -1), "the labels hold only class 3"),
    (np.full(40, -1), "the labels hold no labelled sample"),
])
def test_a_single_class_dataset_names_the_file(tmp_path, labels, fragment):
    npz = write_npz(tmp_path / "one-class.npz", y=labels)
    with pytest.raises(BadInput, match=rf"one-class\.npz: {fragment}; classification needs at least 2 classes"):
        load_data(npz)
    spec = tmp_path / "one-class.yaml"
    spec.write_text("name: one-class\nloader: npz\ntask: classification\npath: one-class.npz\n")
    with pytest.raises(BadInput, match=rf"one-class\.yaml: {fragment}"):
        load_data(spec)


def test_a_small_labeled_fraction_keeps_every_class(tmp_path):
    data = load_data(write_npz(tmp_path / "two.npz", y=np.arange(40) % 2), labeled_fraction=0.01)
    assert set(np.unique(data.y_train[data.y_train >= 0])) == {0, 1}


# 6. Spec paths resolve from the spec's folder; only a user's spec may leave it.

def test_a_user_spec_may_point_outside_its_folder(tmp_path):
    write_npz(tmp_path / "shared.npz", y=np.arange(40) % 4)
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "mine.yaml"
    spec.write_text("name: mine\nloader: npz\ntask: classification\npath: ../shared.npz\n")
    assert load_data(spec).num_classes == 4
    spec.write_text(f"name: mine\nloader: npz\ntask: classification\npath: {tmp_path / 'shared.npz'}\n")
    assert load_data(spec).num_classes == 4


def test_a_builtin_spec_may_not_leave_the_calibration_folder(tmp_path, monkeypatch):
    builtin = tmp_path / "calibration"
    builtin.mkdir()
    write_npz(tmp_path / "outside.npz", y=np.arange(40) % 4)
    write_npz(builtin / "inside.npz", y=np.arange(40) % 4)
    (builtin / "escapes.yaml").write_text("name: escapes\nloader: npz\ntask: classification\npath: ../outside.npz\n")
    (builtin / "stays.yaml").write_text("name: stays\nloader: npz\ntask: classification\npath: inside.npz\n")
    monkeypatch.setattr(edgekd.data, "CALIBRATION_DIR", builtin)
    with pytest.raises(BadInput, match=r"escapes\.yaml: key 'path': '\.\./outside\.npz' leaves the built-in"):
        load_data("escapes")
    assert load_data("stays").num_classes == 4


# 7. Cheap checks first: a wrong --data fails before any model work.

def test_a_missing_data_file_fails_compress_before_the_teacher_loads(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "teacher-was-built"
    (tmp_path / "slow_teacher_factory.py").write_text(
        "from pathlib import Path\n\n"
        f"def teacher():\n    Path({str(marker)!r}).touch()\n    raise RuntimeError('the teacher must not load')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = cli(capsys, "compress", "--data", "/nonexistent.npz", "--teacher", "slow_teacher_factory:teacher",
                    "--out", str(tmp_path / "run"))
    assert code == 2 and "data '/nonexistent.npz': no such file" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_check_data_ref_resolves_without_loading(tmp_path):
    assert check_data_ref("digits") == edgekd.data.CALIBRATION_DIR / "digits.yaml"
    npz = write_npz(tmp_path / "a.npz")
    assert check_data_ref(npz) == npz
    for ref, fragment in ((tmp_path / "absent.npz", "no such file"), (tmp_path, "is a directory"),
                          (tmp_path / "absent.yaml", "no such file")):
        with pytest.raises(BadInput, match=fragment):
            check_data_ref(ref)
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block forever
    with pytest.raises(BadInput, match="not a regular file"):
        check_data_ref(tmp_path / "pipe.txt")


# Arrays are bounded by what they occupy once loaded and widened, not by their bytes on disk.

def _header_only_npz(path: Path, **arrays: tuple[str, tuple[int, ...]]) -> Path:
    """An .npz whose members are .npy headers claiming (dtype, shape), with no data."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, (descr, shape) in arrays.items():
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
            archive.writestr(f"{name}.npy", header.getvalue())
    return path


def test_narrow_npz_arrays_are_bounded_by_what_they_widen_to(tmp_path):
    from edgekd.data import MAX_NPZ_BYTES, MAX_NPZ_LOADED_BYTES

    assert MAX_NPZ_LOADED_BYTES == 2 << 30 and 3 * MAX_NPZ_LOADED_BYTES < 24 << 30  # the peak, with the split
    # 512 MiB of uint8 on disk (a few hundred KB compressed) is 4 GiB as int64
    path = _header_only_npz(tmp_path / "zeros.npz", x=("|u1", (2**23, 1, 8, 8)))
    assert 2**23 * 64 < MAX_NPZ_BYTES
    with pytest.raises(BadInput, match=r"zeros\.npz: arrays 'x' occupy 4\.0 GiB once loaded .*at most 2 GiB"):
        load_data(path)
    # float16 becomes float32; int8 labels become int64
    path = _header_only_npz(tmp_path / "half.npz", x=("<f2", (2**29 + 1,)), y=("|i1", (10,)))  # 1 GiB on disk
    with pytest.raises(BadInput, match=r"half\.npz: arrays 'x' and 'y' occupy 2\.0 GiB once loaded"):
        load_data(path)
    path = _header_only_npz(tmp_path / "labels.npz", x=("|u1", (2**27, 1)), y=("|u1", (2**27 + 1,)))
    with pytest.raises(BadInput, match=r"labels\.npz: arrays 'x' and 'y' occupy 2\.0 GiB once loaded"):
        load_data(path)


def test_a_compressed_npz_is_refused_before_its_arrays_are_read(tmp_path, monkeypatch):
    path = tmp_path / "small.npz"
    np.savez_compressed(path, x=np.zeros((4096, 1, 8, 8), np.uint8), y=np.zeros(4096, np.uint8))
    assert path.stat().st_size < 10_000
    monkeypatch.setattr(edgekd.data, "MAX_NPZ_LOADED_BYTES", 4096 * 64 * 8)  # x fits as int64, y tips it over
    read = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or real_getitem(self, key))
    with pytest.raises(BadInput, match=r"small\.npz: arrays 'x' and 'y' occupy 0\.0 GiB once loaded"):
        load_data(path)
    assert read == []


def test_bench_sample_npz_is_bounded_by_its_widened_arrays(tmp_path):
    from edgekd.bench.samples import load_samples

    path = _header_only_npz(tmp_path / "inputs.npz", input_ids=("|u1", (2**22, 64)), attention_mask=("|u1", (2**22, 64)))
    with pytest.raises(BadInput, match=r"inputs\.npz: arrays 'input_ids' and 'attention_mask' occupy 4\.0 GiB once "
                                       r"loaded .*an \.npz of inputs may occupy at most 2 GiB"):
        load_samples(data=path)


# A prune replay allocates only the shapes the checkpoint's weights or its rebuilt architecture justify.

def _pruned_checkpoint(path: Path, shapes: dict) -> Path:
    import torch

    from edgekd.checkpoint import FORMAT
    from edgekd.models import resnet

    torch.save({"format": FORMAT, "factory": "edgekd.models:resnet", "kwargs": {"width": 4}, "meta": {},
                "transforms": [{"name": "prune", "config": {"shapes": shapes}}],
                "state_dict": resnet(width=4).state_dict()}, path)
    return path


def test_a_prune_config_asking_for_a_huge_tensor_is_refused_naming_the_key(tmp_path):
    from edgekd.checkpoint import load_checkpoint
    from edgekd.models import resnet

    key = next(k for k, v in resnet(width=4).state_dict().items() if v.dim() == 4)
    for shape, expected in [([20000, 20000, 3, 3], "as its state_dict holds"), ([4, 4, 3], "as its state_dict holds"),
                            ("big", "must be a list of non-negative integers"), ([-1, 1, 3, 3], "non-negative")]:
        path = _pruned_checkpoint(tmp_path / "pruned.pt", {key: shape})
        with pytest.raises(BadInput, match=rf"config\.shapes\['{key}'\].*{expected}"):
            load_checkpoint(path)


def test_a_prune_replay_allocates_at_most_a_documented_number_of_elements(monkeypatch):
    import torch

    import edgekd.prune.reshape as reshape
    from edgekd.models import resnet

    assert reshape.MAX_RESIZED_ELEMENTS == 2**30
    model = resnet(width=4)
    state = model.state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4)
    narrower = [2] + list(state[key].shape[1:])
    assert reshape.reshape_to_state_dict(resnet(width=4), {"shapes": {key: narrower}}, state).state_dict()[key].shape \
        == torch.Size(narrower)  # a prune narrows: allowed even where the final weights differ (chained prunes)
    wider = [8] + list(state[key].shape[1:])
    with pytest.raises(BadInput, match=rf"config\.shapes\['{key}'\] is \[8, .*no wider than|as its state_dict holds"):
        reshape.reshape_to_state_dict(resnet(width=4), {"shapes": {key: wider}}, state)
    monkeypatch.setattr(reshape, "MAX_RESIZED_ELEMENTS", 10)
    with pytest.raises(BadInput, match=rf"config\.shapes\['{key}'\] brings the resized tensors past 10 elements"):
        reshape.reshape_to_state_dict(resnet(width=4), {"shapes": {key: narrower}}, state)
