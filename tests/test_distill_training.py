"""The distillation loop on tiny models: cache, resume, unlabeled data, divergence, modes, bad inputs."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.data import Dataset
from edgekd.distill import (
    METRICS,
    DistillConfig,
    LossTerm,
    TrainingDiverged,
    config_from_mapping,
    distill,
    evaluate,
    register_metric,
)
from edgekd.errors import BadInput, EdgeKDError

FEATURES, CLASSES = 6, 3


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded, above all on a shared CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Block(nn.Module):
    def __init__(self, cin, cout, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(cin, cout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(torch.relu(self.fc(x)))


class MLP(nn.Module):
    def __init__(self, hidden=16, out=CLASSES, dropout=0.0, spare=False):
        super().__init__()
        self.body = nn.Sequential(Block(FEATURES, hidden, dropout), Block(hidden, hidden, dropout))
        self.head = nn.Linear(hidden, out)
        if spare:  # a layer the forward never uses, like a Hugging Face pooler nobody reads
            self.spare = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.body(x))


class Counting(nn.Module):
    """Wraps a teacher and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def make_teacher(seed=0, hidden=32, out=CLASSES):
    """A random MLP whose zero biases and unit-variance weights give all classes a fair share."""
    torch.manual_seed(seed)
    model = MLP(hidden, out)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 2 / param.shape[1] ** 0.5) if param.dim() > 1 else param.zero_()
    return model


def make_data(n_train=96, n_val=32, *, labeled=True, task="classification", seed=0, teacher=None) -> Dataset:
    """Gaussian inputs labeled by a fixed random teacher's argmax, so a student can learn them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_val + 8, FEATURES)).astype(np.float32)
    labeler = teacher or make_teacher()
    with torch.no_grad():
        y = labeler(torch.from_numpy(x)).argmax(1).numpy().astype(np.int64)
    if task == "embedding":
        y = None
    parts = (x[:n_train], None if y is None else y[:n_train], x[n_train:n_train + n_val],
             None if y is None else y[n_train:n_train + n_val], x[-8:], None if y is None else y[-8:])
    y_train = parts[1]
    if y_train is not None and not labeled:
        y_train = np.full_like(y_train, -1)
    return Dataset("toy", task, parts[0], y_train, parts[2], parts[3], parts[4], parts[5],
                   CLASSES if task == "classification" else None, "toy")


def student(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MLP(**kwargs)


def config(**overrides) -> DistillConfig:
    base = dict(epochs=3, batch_size=16, lr=1e-2, patience=None, cache=False)
    return DistillConfig(**{**base, **overrides})


def test_kd_learns_from_unlabeled_samples_alone():
    teacher = make_teacher()
    data = make_data(n_train=192, labeled=False, teacher=teacher)
    result = distill(student=student(), teacher=teacher, data=data, config=config(epochs=12), progress=False)
    first, last = result.history[0], result.history[-1]
    assert all(h["terms"]["ce"] == 0.0 for h in result.history)  # no labels: CE contributes nothing
    assert last["terms"]["response"] < first["terms"]["response"] / 2
    assert result.metrics["teacher_agreement"] >= max(0.8, first["val"]["teacher_agreement"] + 0.1)
    assert result.metrics["accuracy"] == pytest.approx(evaluate(result.model, data.x_val, data.y_val)["accuracy"])


def test_baseline_trains_on_labels_only_and_needs_no_teacher():
    data = make_data()
    result = distill(student=student(), data=data, config=config(kd=False, epochs=12), progress=False)
    assert set(result.history[0]["terms"]) == {"ce"}
    assert result.metrics["accuracy"] > 0.6 and "teacher_agreement" not in result.metrics
    with pytest.raises(BadInput, match="no labeled sample"):
        distill(student=student(), data=make_data(labeled=False), config=config(kd=False), progress=False)


def test_max_steps_bounds_a_run_mid_epoch():
    data = make_data()
    full = distill(student=student(), data=data, config=config(kd=False, epochs=3), progress=False)
    per_epoch = full.history[0]["steps"]
    bounded = distill(student=student(), data=data, config=config(kd=False, epochs=3, max_steps=per_epoch + 2),
                      progress=False)
    assert [r["steps"] for r in bounded.history] == [per_epoch, 2]
    assert bounded.history[-1]["steps_done"] == per_epoch + 2
    with pytest.raises(BadInput, match="max_steps"):
        distill(student=student(), data=data, config=config(kd=False, max_steps=0), progress=False)


def test_offline_cache_runs_the_teacher_once_across_epochs_and_runs(tmp_path):
    teacher = Counting(make_teacher())
    data = make_data()
    terms = [LossTerm("fitnets", 0.1, student_layer="body.1", teacher_layer="inner.body.1")]
    cached = config(cache=True, cache_dir=tmp_path / "cache", epochs=3, losses=terms, eval_batch_size=64)
    distill(student=student(), teacher=teacher, data=data, config=cached, progress=False)
    assert teacher.calls == 2 + 1  # train set in 2 batches of 64, validation set in 1, whatever the epochs
    features = list((tmp_path / "cache").glob("*/feature.inner.body.1.npy"))
    assert len(features) == 1 and np.load(features[0], mmap_mode="r").shape == (96, 32)
    teacher.calls = 0
    again = distill(student=student(), teacher=teacher, data=data, config=cached, progress=False)
    assert teacher.calls == 0 and again.history[-1]["terms"]["fitnets:body.1->inner.body.1"] > 0
    live = distill(student=student(), teacher=teacher, data=data, config=config(epochs=3), progress=False)
    assert teacher.calls == 1 + 3 * live.history[0]["steps"] + 1  # probe, every step, validation once


class StopAfter:
    """Callback that interrupts training at the end of a given epoch (like a killed process)."""

    class Interrupt(Exception):
        pass

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, model, metrics):
        if epoch == self.epoch:
            raise self.Interrupt


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    teacher = make_teacher()
    data = make_data(labeled=False)
    data = Dataset(**{**data.__dict__, "y_train": np.where(np.arange(96) % 3 == 0, make_data().y_train, -1)})
    recipe = config(epochs=4, losses=[LossTerm("fitnets", 0.5, student_layer="body.1", teacher_layer="body.0")],
                    augment=lambda x, rng: x + rng.normal(scale=0.05, size=x.shape).astype(np.float32),
                    warmup_epochs=1, grad_clip=5.0)

    def run(out_dir, seed, **kwargs):
        return distill(student=student(seed, dropout=0.2), teacher=teacher, data=data, config=recipe,
                       out_dir=out_dir, progress=False, **kwargs)

    whole = run(tmp_path / "whole", 0)
    with pytest.raises(StopAfter.Interrupt):
        run(tmp_path / "split", 0, callbacks=[StopAfter(1)])
    resumed = run(tmp_path / "split", seed=7, resume=True)  # fresh init: all state comes from the checkpoint
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]
    assert whole.best_epoch == resumed.best_epoch
    finished = run(tmp_path / "split", seed=9, resume=True)  # a finished run resumes to its result at once
    assert torch.equal(finished.model.head.weight, whole.model.head.weight)
    changed = DistillConfig(**{**recipe.__dict__, "lr": 0.5})
    with pytest.raises(BadInput, match="differs in: lr"):
        distill(student=student(), teacher=teacher, data=data, config=changed, out_dir=tmp_path / "split",
                resume=True, progress=False)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    class Poison:
        def on_epoch_start(self, epoch, model):
            if epoch == 1:
                with torch.no_grad():
                    model.head.weight[0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1 step 0.*epoch 0\) is kept") as err:
        distill(student=student(), teacher=make_teacher(), data=make_data(), config=config(), out_dir=tmp_path,
                callbacks=[Poison()], progress=False)
    assert isinstance(err.value, EdgeKDError) and err.value.exit_code == 1
    state = torch.load(tmp_path / "checkpoints" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 0 and not state["finished"]
    assert all(torch.isfinite(v).all() for v in state["modules"].values() if v.is_floating_point())


def test_early_stopping_restores_the_best_epoch_with_a_registered_metric():
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95, 0.99])
    register_metric("toy-score", primary="score")(lambda outputs, y, teacher_outputs: {"score": next(scores)})
    snapshots = {}

    class Snapshot:
        def on_epoch_end(self, epoch, model, metrics):
            snapshots[epoch] = copy.deepcopy(model.state_dict())

    try:
        data = Dataset(**{**make_data().__dict__, "task": "toy-score"})
        result = distill(student=student(), teacher=make_teacher(), data=data, config=config(epochs=6, patience=2),
                         callbacks=[Snapshot()], progress=False)
    finally:
        METRICS.pop("toy-score")
    assert [h["val"]["score"] for h in result.history] == [0.5, 0.9, 0.7, 0.6]  # stopped after 2 bad epochs
    assert result.best_epoch == 1 and result.metrics == {"score": 0.9}
    assert set(result.history[0]["terms"]) == {"cosine"}  # a non-classification task defaults to cosine on outputs
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, snapshots[1][name]), name


def test_embedding_task_distills_by_cosine_through_a_projection():
    teacher = make_teacher(out=8)
    data = make_data(task="embedding")
    result = distill(student=student(out=4), teacher=teacher, data=data,
                     config=config(epochs=8, losses=[LossTerm("cosine"), LossTerm("rkd_distance", 0.5)]),
                     progress=False)
    assert {"cosine", "rkd_distance"} == set(result.history[0]["terms"])
    assert result.history[-1]["terms"]["cosine"] < result.history[0]["terms"]["cosine"]
    assert result.metrics["cosine_to_teacher"] is None  # widths differ: judged by similarity structure
    agreement = [h["val"]["teacher_agreement"] for h in result.history]
    assert agreement[-1] > agreement[0]


def test_feature_losses_default_to_proportional_block_mapping():
    result = distill(student=student(), teacher=make_teacher(), data=make_data(),
                     config=config(epochs=1, losses=[LossTerm("fitnets", 0.2), LossTerm("mse", student_layer="body.0")],
                                   layer_map={"body.0": "body.1"}),
                     progress=False)
    assert {"fitnets:body.0->body.1", "mse:body.0->body.1"} <= set(result.history[0]["terms"])
    result = distill(student=student(), teacher=make_teacher(), data=make_data(), progress=False,
                     config=config(epochs=1, losses=[LossTerm("fitnets", 0.2), LossTerm("mse", student_layer="body.1")]))
    assert {"fitnets:body.0->body.0", "fitnets:body.1->body.1", "mse:body.1->body.1"} <= set(result.history[0]["terms"])
    with pytest.raises(BadInput, match="attention transfer needs 4-D features"):
        distill(student=student(), teacher=make_teacher(), data=make_data(), progress=False,
                config=config(losses=[LossTerm("attention", student_layer="body.0")]))


def test_self_distillation_trains_a_fresh_copy_of_the_teacher_for_each_generation():
    teacher = make_teacher()
    result = distill(data=make_data(), teacher=teacher, config=config(mode="self", generations=2, epochs=2),
                     progress=False)
    assert type(result.model) is type(teacher) and result.model is not teacher
    assert len(result.stages) == 1 and result.stages[0].model is not result.model
    assert not torch.equal(result.model.head.weight, teacher.head.weight)
    with pytest.raises(BadInput, match="architecture"):
        distill(student=student(), data=make_data(), teacher=teacher, config=config(mode="self"), progress=False)


def test_online_mutual_learning_trains_peers_without_a_teacher():
    result = distill(student=student(), data=make_data(), config=config(mode="online", peers=3, epochs=3),
                     progress=False)
    terms = result.history[0]["terms"]
    assert {"peer0/response", "peer1/response", "peer2/ce"} <= set(terms)
    assert len(result.history[-1]["val_peers"]) == 3 and result.metrics["peer"] in (0, 1, 2)
    with pytest.raises(BadInput, match="pass no teacher"):
        distill(student=student(), teacher=make_teacher(), data=make_data(), config=config(mode="online"),
                progress=False)


def test_multistage_goes_teacher_to_assistant_to_student(tmp_path):
    result = distill(student=student(), assistant=MLP(24), teacher=make_teacher(), data=make_data(),
                     config=config(mode="multistage", epochs=2), out_dir=tmp_path, progress=False)
    assert result.stages[0].model.head.in_features == 24 and result.model.head.in_features == 16
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1-assistant", "2-student"]
    with pytest.raises(BadInput, match="needs an assistant"):
        distill(student=student(), teacher=make_teacher(), data=make_data(), config=config(mode="multistage"),
                progress=False)


def test_evaluate_matches_hand_counted_accuracy_and_agreement():
    model, teacher = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))  # predicts argmax of the input
        teacher.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # predicts the other class
    x = np.array([[1, 0], [0, 1], [2, 1], [0, 3]], dtype=np.float32)  # model predicts 0, 1, 0, 1
    y = np.array([0, 0, 0, -1])  # correct, wrong, correct, unlabeled
    assert evaluate(model, x, y, teacher=teacher) == {"accuracy": pytest.approx(2 / 3), "teacher_agreement": 0.0}


def test_hugging_face_attention_probabilities_transfer_across_head_counts():
    transformers = pytest.importorskip("transformers")

    class Encoder(nn.Module):
        def __init__(self, hidden, heads, layers):
            super().__init__()
            cfg = transformers.BertConfig(vocab_size=30, hidden_size=hidden, num_hidden_layers=layers,
                                          num_attention_heads=heads, intermediate_size=2 * hidden,
                                          max_position_embeddings=16, attn_implementation="eager",
                                          attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
            self.bert = transformers.BertModel(cfg)

        def forward(self, ids):
            return self.bert(input_ids=ids).last_hidden_state.mean(1)

    torch.manual_seed(0)
    teacher, small = Encoder(16, 4, 2), Encoder(8, 2, 1)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30, size=(40, 6)).astype(np.int64)
    data = Dataset("ids", "embedding", ids[:24], None, ids[24:32], None, ids[32:], None, None, "ids")
    term = LossTerm("attention", student_layer="bert.encoder.layer.0.attention.self#1",
                    teacher_layer="bert.encoder.layer.1.attention.self#1")
    result = distill(student=small, teacher=teacher, data=data, progress=False,
                     config=config(epochs=4, losses=[term, LossTerm("mse", 1.0)]))
    label = "attention:bert.encoder.layer.0.attention.self#1->bert.encoder.layer.1.attention.self#1"
    values = [h["terms"][label] for h in result.history]
    assert all(np.isfinite(values)) and values[-1] < values[0]


BAD_INPUTS = [
    ("shape", lambda d: {"x_train": d.x_train[:, :4]}, {}, r"cannot run on data x_train.*shape \(2, 4\)"),
    ("dtype", lambda d: {"x_train": d.x_train.astype(np.float64)}, {}, "dtype float64 but the student's parameters are float32"),
    ("nan", lambda d: {"x_train": np.where(np.arange(96)[:, None] == 5, np.nan, d.x_train).astype(np.float32)}, {},
     r"NaN or Inf values in 1 sample\(s\) \(first: index 5\)"),
    ("empty", lambda d: {"x_train": d.x_train[:0], "y_train": d.y_train[:0]}, {}, "x_train is empty"),
    ("labels", lambda d: {"y_train": d.y_train + 5}, {}, "labels up to 7 but the student outputs 3 classes"),
    ("layer", lambda d: {}, {"losses": [LossTerm("fitnets", student_layer="body.3", teacher_layer="body.0")]},
     r"student has no layer 'body\.3' \(close matches: body"),
    ("loss", lambda d: {}, {"losses": [LossTerm("rkd-angle")]}, "unknown loss 'rkd-angle' .*rkd_angle"),
    ("lr", lambda d: {}, {"lr": -1.0}, "key 'lr'"),
]


@pytest.mark.parametrize("case, data_change, config_change, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_badinput_naming_the_problem(case, data_change, config_change, message):
    data = make_data()
    data = Dataset(**{**data.__dict__, **data_change(data)})
    with pytest.raises(BadInput, match=message) as err:
        distill(student=student(), teacher=make_teacher(), data=data, config=config(**config_change), progress=False)
    assert err.value.exit_code == 2


def test_recipe_mapping_builds_a_config_and_names_bad_keys():
    config = config_from_mapping({"epochs": 3, "losses": [{"name": "fitnets", "weight": 0.5, "student_layer": "body.0"}]})
    assert config.epochs == 3 and config.losses == [LossTerm("fitnets", 0.5, student_layer="body.0")]
    for bad, message in (({"epoch": 3}, "unknown key 'epoch' .*epochs"),
                         ({"losses": [{"name": "fitnets", "wieght": 1}]}, r"losses\[0\]\.wieght' .*weight"),
                         ({"cache": "yes"}, "key 'cache': must be true or false"),
                         ({"temperature": 0}, "key 'temperature': must be > 0")):
        with pytest.raises(BadInput, match=message):
            config_from_mapping(bad, source="recipe.yaml")


def test_the_package_is_callable_as_the_interface_names_it():
    import edgekd.distill

    result = edgekd.distill(student=student(), data=make_data(), config=config(kd=False, epochs=1), progress=False)
    assert len(result.history) == 1


def test_worker_processes_load_the_same_batches():
    recipe = config(epochs=2, augment=lambda x, rng: x + rng.normal(scale=0.1, size=x.shape).astype(np.float32))
    runs = [distill(student=student(), teacher=make_teacher(), data=make_data(), progress=False,
                    config=DistillConfig(**{**recipe.__dict__, "num_workers": workers})) for workers in (0, 1)]
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


def test_model_mismatches_raise_badinput():
    with pytest.raises(BadInput, match="student outputs 3 classes but the teacher outputs 5"):
        distill(student=student(), teacher=make_teacher(out=5), data=make_data(), config=config(), progress=False)
    with pytest.raises(BadInput, match="none was given"):
        distill(student=student(), data=make_data(), config=config(), progress=False)


DDP_WORKER = """
import os, sys
import torch
sys.path.insert(0, {tests!r})
from test_distill_training import config, make_data, make_teacher, student
from edgekd.distill import distill
torch.set_num_threads(1)
rank = int(os.environ["RANK"])
result = distill(student=student(spare=True), teacher=make_teacher(), data=make_data(n_train=64), progress=False,
                 config=config(batch_size=8, cache=True, cache_dir={cache!r}), out_dir={out!r} + f"/rank{{rank}}")
torch.save(result.model.state_dict(), {out!r} + f"/weights{{rank}}.pt")
"""


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_the_global_batch(tmp_path):
    import pathlib
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=str(pathlib.Path(__file__).parent), cache=str(tmp_path / "cache"),
                                        out=str(tmp_path)))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0 = torch.load(tmp_path / "weights0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "weights1.pt", weights_only=True)
    single = distill(student=student(spare=True), teacher=make_teacher(), data=make_data(n_train=64), progress=False,
                     config=config(batch_size=16, cache=True, cache_dir=tmp_path / "cache"))
    for name, value in single.model.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name  # ranks stay in lockstep
        assert torch.allclose(rank0[name], value, atol=1e-5), name  # 2 x 8 samples == 1 x 16 samples
    assert (tmp_path / "rank0" / "checkpoints" / "train_state.pt").is_file()
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes
