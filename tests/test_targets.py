"""Target profile schema, loading and availability."""

from pathlib import Path

import pytest
import yaml

from edgekd.errors import BadInput
from edgekd.host import HostInfo
from edgekd.targets import availability, list_targets, load_target

BASE = yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("targets/x86-cpu-openvino.yaml").read_text())


def write_profile(tmp_path: Path, name: str = "my-target", **changes) -> Path:
    data = {**BASE, "name": name, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bundled_profiles_cover_the_required_devices():
    profiles = {t.name: t for t in list_targets()}
    assert len(profiles) >= 7
    kinds = {(t.device, t.runtime, t.runtime_device) for t in profiles.values()}
    for needed in [("cpu", "openvino", "CPU"), ("cpu", "onnxruntime", "CPUExecutionProvider"),
                   ("gpu", "openvino", "GPU"), ("npu", "openvino", "NPU"), ("npu", "onnxruntime", "QNNExecutionProvider")]:
        assert needed in kinds
    assert profiles["arm-cpu-onnxruntime"].host.arch == "aarch64"
    qnn = profiles["qualcomm-npu-qnn"].quantization
    assert (qnn.weights.dtype, qnn.weights.symmetric, qnn.weights.per_channel) == ("uint8", False, False)


def test_every_bundled_profile_names_its_int8_source_in_a_comment():
    for path in Path(__file__).resolve().parent.parent.joinpath("targets").glob("*.yaml"):
        assert "INT8 scheme" in path.read_text() or "int8" in path.read_text().split("name:")[0].lower(), path


def test_load_by_path_equals_load_by_name(tmp_path):
    path = write_profile(tmp_path, "x86-cpu-openvino")
    assert load_target(path) == load_target("x86-cpu-openvino")


@pytest.mark.parametrize("changes, key", [
    ({"slo": {"latency_p95_ms": -1}}, "slo.latency_p95_ms"),
    ({"slo": {"latency_p95_ms": "fast"}}, "slo.latency_p95_ms"),
    ({"batch_size": "1"}, "batch_size"),
    ({"channel_multiple": 0}, "channel_multiple"),
    ({"precision": "int4"}, "precision"),
    ({"device": "tpu"}, "device"),
    ({"quantization": {"weights": {"dtype": "int16"}}}, "quantization.weights.dtype"),
    ({"slo": {"latency_p95": 5}}, "slo.latency_p95"),
    ({"colour": "blue"}, "colour"),
    ({"slo": {"ttft_ms_p95": 0}}, "slo.ttft_ms_p95"),
    ({"slo": {"decode_tokens_per_s_min": -3}}, "slo.decode_tokens_per_s_min"),
    ({"generation": {"prompt_tokens": 0}}, "generation.prompt_tokens"),
    ({"generation": {"new_tokens": 100_000}}, "generation.new_tokens"),
    ({"generation": {"chat": True}}, "generation.chat"),
])
def test_schema_errors_name_file_and_key(tmp_path, changes, key):
    path = write_profile(tmp_path, **changes)
    with pytest.raises(BadInput) as err:
        load_target(path)
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_missing_required_key(tmp_path):
    data = dict(BASE, name="my-target")
    del data["runtime"]
    path = tmp_path / "my-target.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BadInput, match="'runtime'"):
        load_target(path)


def test_broken_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nslo: {latency_p95_ms: 5\n")
    with pytest.raises(BadInput, match=r"broken\.yaml: broken YAML at line"):
        load_target(path)


def test_name_must_match_file(tmp_path):
    path = write_profile(tmp_path, "alpha")
    path = path.rename(tmp_path / "beta.yaml")
    with pytest.raises(BadInput, match="must match the file name"):
        load_target(path)


def test_unknown_target_lists_known_ones():
    with pytest.raises(BadInput, match="unknown target 'no-such-device'.*x86-cpu-openvino"):
        load_target("no-such-device")


def host(**kw) -> HostInfo:
    base = dict(arch="x86_64", cpu="test", isa=("avx2", "fma"), ort_providers=("CPUExecutionProvider",),
                openvino_devices=("CPU",), cores=2)
    return HostInfo(**{**base, **kw})


def test_availability_reasons_in_words():
    targets = {t.name: t for t in list_targets()}
    ok, reason, warnings = availability(targets["x86-cpu-openvino"], host())
    assert ok and reason is None and any("avx512_vnni" in w for w in warnings)
    ok, _, warnings = availability(targets["x86-cpu-openvino"], host(isa=("avx2", "avx512_vnni")))
    assert ok and warnings == []
    ok, reason, _ = availability(targets["arm-cpu-onnxruntime"], host())
    assert not ok and "aarch64" in reason
    ok, reason, _ = availability(targets["arm-cpu-onnxruntime"], host(arch="aarch64", isa=("neon", "dotprod")))
    assert ok
    ok, reason, _ = availability(targets["intel-npu-core-ultra"], host())
    assert not ok and "NPU" in reason
    ok, _, _ = availability(targets["intel-npu-core-ultra"], host(openvino_devices=("CPU", "NPU")))
    assert ok
    ok, reason, _ = availability(targets["nvidia-gpu-onnxruntime-cuda"], host())
    assert not ok and "CUDAExecutionProvider" in reason
    ok, _, _ = availability(targets["nvidia-gpu-onnxruntime-cuda"],
                            host(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")))
    assert ok
    ok, reason, _ = availability(targets["x86-cpu-onnxruntime"], host(isa=()))
    assert not ok and "avx2" in reason


def test_detect_host_reads_this_machine():
    from edgekd.host import detect_host

    info = detect_host()
    assert info.arch and info.cores >= 1
    assert "CPUExecutionProvider" in info.ort_providers
    assert "CPU" in info.openvino_devices


def test_generation_block_and_its_slo_keys(tmp_path):
    """A causal LM's timing (prompt, new tokens) and its two limits: time to first token (a ceiling) and the
    decode rate (a floor), checked like every other figure."""
    from edgekd.bench.slo import check_slo

    target = load_target(write_profile(tmp_path, generation={"prompt_tokens": 32, "new_tokens": 16},
                                       slo={"ttft_ms_p95": 50, "decode_tokens_per_s_min": 20}))
    assert (target.generation.prompt_tokens, target.generation.new_tokens) == (32, 16)
    assert load_target("x86-cpu-openvino").generation.new_tokens == 32  # default: a short chat turn
    ok = check_slo(slo=target.slo, figures={"ttft_ms_p95": 40, "decode_tokens_per_s_min": 25})
    assert ok.verdict == "pass"
    slow = check_slo(slo=target.slo, figures={"ttft_ms_p95": 40, "decode_tokens_per_s_min": 10})
    assert slow.verdict == "fail" and slow.reason == "under the floor: decode_tokens_per_s_min"
    assert check_slo(slo=target.slo, figures={"ttft_ms_p95": 40}).verdict == "not-measured"
