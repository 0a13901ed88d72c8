"""export(): PyTorch -> ONNX (QDQ where fake-quantized, or FP16) -> OpenVINO IR, each behind a parity gate.

Everything is built in a private temp folder inside `out_dir` and moved into place only after
the gate passes, so a deploy path never holds an unverified model. A format that fails its checks
is rejected: its files move to `out_dir/rejected/<name>/` (with `gate.json` saying why) for
inspection, and an earlier export's files of it (`<name>.onnx`, `openvino/<name>.*`) are removed
(they no longer match the model asked for; files edgekd did not write are left alone). A rejected
`required` format (by default, any) rejects every format and raises GateFailed; the others only
withhold themselves (`ExportResult.rejected`), so a comparison-only model keeps what passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from edgekd.errors import NOT_INPUT_ERRORS, BadInput, GateFailed
from edgekd.export.gate import compare, parity_failures, quantized_compute_nodes
from edgekd.export.passes import clean_qdq_graph
from edgekd.export.sanity import task_check
from edgekd.io import write_json
from edgekd.quant import onnx_translation_table
from edgekd.runtimes import cpu_session, int8_counts

FORMATS = ("onnx", "openvino")
TASKS = ("classification", "embedding")
PRECISIONS = ("fp32", "fp16")
# Above this many parameter bytes a single ONNX file would approach protobuf's 2 GB limit.
SINGLE_FILE_LIMIT = 1_500_000_000
PARITY_BATCH = 64
# An FP16 artifact is refused when a layer's output on the parity inputs reaches half FP16's largest
# finite value: a GPU stores that activation as inf. CPU runtimes cannot show it (they compute FP16
# graphs in FP32 between casts), so the PyTorch reference run is watched instead.
FP16_MAX = 65504.0
FP16_HEADROOM = 0.5


@dataclass
class ExportResult:
    onnx: Path | None
    openvino_xml: Path | None
    parity: dict  # {"onnx": {"top1_agreement", "max_abs_diff", "cosine", ...}, "openvino": {...}}
    int8_executed: dict  # {"onnx": bool, "openvino": bool}: integer kernels ran; False for a float model
    int8_kernels: dict = field(default_factory=dict)  # per runtime: {"kernels": {op: n}, "expected": n, "coverage"}
    quantized: bool = False
    precision: str = "fp32"  # of the float tensors: "fp32", or "fp16" (inputs and outputs stay fp32)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    dynamic_dims: dict = field(default_factory=dict)
    graph_rewrites: dict = field(default_factory=dict)
    gate_passed: bool = True
    problems: list[str] = field(default_factory=list)
    rejected: dict = field(default_factory=dict)  # format -> its failed checks: withheld by the gate, not published
    warnings: list[str] = field(default_factory=list)
    task_check: dict = field(default_factory=dict)  # does the PyTorch model still work (edgekd.export.sanity)
    report: Path | None = None


def _as_tensors(inputs, what: str) -> tuple[torch.Tensor, ...]:
    items = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if not torch.is_tensor(item):
            raise BadInput(f"{what}[{i}]: expected a tensor or numpy array, got {type(item).__name__}")
        out.append(item)
    if not out:
        raise BadInput(f"{what}: no inputs given")
    return tuple(out)


def _load_model(model) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (str, os.PathLike)):
        from edgekd.checkpoint import load_checkpoint

        return load_checkpoint(model).model
    raise BadInput(f"model must be a torch.nn.Module or a checkpoint path, got {type(model).__name__}")


def _dynamic_dims(names: list[str], example: tuple[torch.Tensor, ...], dynamic_dims: dict | None,
                  static_shapes: bool) -> dict[str, dict[int, str]]:
    if static_shapes:
        if dynamic_dims:
            raise BadInput("static_shapes=True contradicts dynamic_dims; give one or the other")
        return {}
    if dynamic_dims is None:
        return {name: {0: "batch"} for name in names}
    out = {}
    for name, dims in dynamic_dims.items():
        if name not in names:
            raise BadInput(f"dynamic_dims names input '{name}', but the inputs are {', '.join(names)}")
        tensor = example[names.index(name)]
        out[name] = {}
        for axis, label in dict(dims).items():
            if not isinstance(axis, int) or not -tensor.dim() <= axis < tensor.dim():
                raise BadInput(f"dynamic_dims['{name}']: axis {axis!r} is not an axis of a {tensor.dim()}-D input")
            out[name][axis % tensor.dim()] = str(label)
    return out


def _widen(example: tuple[torch.Tensor, ...], names: list[str], dims: dict) -> tuple[torch.Tensor, ...]:
    """torch.export specializes a dynamic dim whose example size is 0 or 1; repeat such dims to 2."""
    out = []
    for name, tensor in zip(names, example):
        for axis in dims.get(name, {}):
            if tensor.shape[axis] < 2:
                repeats = [1] * tensor.dim()
                repeats[axis] = 2
                tensor = tensor.repeat(*repeats)
        out.append(tensor)
    return tuple(out)


@contextlib.contextmanager
def quiet_export():
    """The dynamo exporter prints progress and logs optional-package warnings (transformers' exporter adds its
    own "experimental" banner); keep the CLI clean."""
    # transformers' exporter logs under its file path, a child of the root logger: the root is quieted too
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "transformers", None)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.output) + list(graph.value_info) + list(graph.initializer):
        if value.name == old:
            value.name = new


def _name_outputs(graph: onnx.GraphProto, names: list[str]) -> None:
    """Give the graph outputs the requested names. (The exporter's own renaming can collide with an
    internal value of the same name, e.g. output "embedding" and an nn.Embedding's result.)"""
    taken = {name for node in graph.node for name in node.output} | {i.name for i in graph.initializer}
    for output, name in zip(list(graph.output), names):
        if output.name == name:
            continue
        if name in taken:
            _rename_value(graph, name, f"{name}__internal")
        _rename_value(graph, output.name, name)


def _export_onnx(model: nn.Module, example: tuple, path: Path, *, input_names, dims) -> None:
    dynamic_shapes = tuple(dims.get(name) or None for name in input_names) if dims else None
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with quiet_export():
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=input_names,
                              dynamic_shapes=dynamic_shapes,
                              custom_translation_table=onnx_translation_table(),
                              external_data=param_bytes > SINGLE_FILE_LIMIT, verbose=False)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:  # the exporter raises many types; the model is what the user must change
        text = str(err)
        if "Exception summary" in text:  # torch.onnx wraps the real cause after this heading
            text = text.split("Exception summary", 1)[1]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        summary = lines[0] if lines else ""
        raise BadInput(f"cannot export {type(model).__name__} to ONNX: {type(err).__name__}: {summary[:300]}") from None


def _to_fp16(graph: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and activations with FP32 graph inputs/outputs (ONNX Runtime's own converter;
    it keeps the ops FP16 cannot represent safely, e.g. Resize, Range, in FP32). The converter
    appends its input casts at the end of the node list; onnx-ir (onnxscript's IR) re-sorts them."""
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet_export():
        converted = onnx_ir.from_proto(convert_float_to_float16(graph, keep_io_types=True))
    converted.graph.sort()
    converted = onnx_ir.to_proto(converted)
    onnx.checker.check_model(converted)
    return converted


@contextlib.contextmanager
def _peak_outputs(model: nn.Module, enabled: bool):
    """Yield {module name: largest |output|} over the forward passes run inside the block (leaf modules)."""
    peaks: dict[str, float] = {}
    if not enabled:
        yield peaks
        return

    def watch(name: str):
        def record(module, args, output):
            for leaf in tree_leaves(output):
                if torch.is_tensor(leaf) and leaf.is_floating_point() and leaf.numel():
                    peaks[name] = max(peaks.get(name, 0.0), float(leaf.detach().abs().max()))
        return record

    handles = [m.register_forward_hook(watch(n)) for n, m in model.named_modules() if n and not any(m.children())]
    try:
        yield peaks
    finally:
        for handle in handles:
            handle.remove()


def _fp16_overflow(peaks: dict[str, float]) -> list[str]:
    limit = FP16_MAX * FP16_HEADROOM
    return [f"fp16: layer '{name}' outputs values up to {peak:.3g}, past {limit:.0f} (half the FP16 range); "
            "keep this model FP32" for name, peak in peaks.items() if not peak < limit]


def _run_torch(model: nn.Module, inputs: tuple[np.ndarray, ...], batch: int) -> list[np.ndarray]:
    outputs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch):
            leaves = tree_leaves(model(*(torch.from_numpy(a[start:start + batch]) for a in inputs)))
            outputs.append([leaf.detach().float().numpy() for leaf in leaves if torch.is_tensor(leaf)])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def _batches(inputs: tuple[np.ndarray, ...], batch: int, static: bool):
    """Slices of `batch` samples; with static shapes the last one is padded by repetition (and the
    padding later trimmed) because the model accepts exactly that batch size."""
    n = len(inputs[0])
    for start in range(0, n, batch):
        part = [a[start:start + batch] for a in inputs]
        real = len(part[0])
        if static and real < batch:
            part = [np.concatenate([p] + [p[-1:]] * (batch - real)) for p in part]
        yield part, real


def _run_runtime(run, inputs: tuple[np.ndarray, ...], batch: int, static: bool) -> list[np.ndarray]:
    outputs: list[list[np.ndarray]] = []
    for part, real in _batches(inputs, batch, static):
        outputs.append([np.asarray(o)[:real] for o in run(part)])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def export(*, model, example_inputs, out_dir: Path, formats: Sequence[str] = FORMATS, parity_inputs=None,
           input_names: Sequence[str] | None = None, output_names: Sequence[str] | None = None,
           dynamic_dims: dict | None = None, static_shapes: bool = False, name: str = "model", gate: bool = True,
           task: str = "classification", precision: str = "fp32", labels=None,
           recorded_accuracy: float | None = None, required: Sequence[str] | None = None) -> ExportResult:
    """Export `model` (an nn.Module or an edgekd checkpoint path) and verify each artifact.

    `example_inputs`: a tensor or a tuple of tensors (one per forward argument), also fixing the
    static shapes when `static_shapes=True`. `dynamic_dims`: {input_name: {axis: "label"}};
    default: axis 0 of every input is the dynamic "batch". `parity_inputs`: held-out samples
    (array, or tuple of arrays), compared between PyTorch and each runtime; without them the
    example inputs are used and the report says so. With `gate=True` (default) a failed check
    raises GateFailed and leaves no artifact at the deploy path. `required` (default: every format)
    narrows that to the formats the caller cannot do without: another format that fails is only
    withheld (`result.rejected` says why, `result.onnx` / `result.openvino_xml` stay None for it);
    `required=()` never raises, for a model that is only compared, never deployed.

    `precision="fp16"` (for GPU targets that run FP16) stores a float model's weights and
    activations in FP16, keeping FP32 inputs and outputs so callers feed it as before; the same
    gate applies, and an overflow (inf/NaN at the outputs) fails it.

    The gate also fails a model that no longer works in PyTorch itself (edgekd.export.sanity): the
    same output for every parity input, or, given the parity inputs' `labels`, one class predicted
    for all of them, or accuracy under half the `recorded_accuracy` (what training measured).
    """
    formats = tuple(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise BadInput(f"formats must be a non-empty subset of {', '.join(FORMATS)}, "
                       f"got {', '.join(formats) or 'none'}")
    if "openvino" in formats and "onnx" not in formats:
        formats = ("onnx",) + formats  # OpenVINO IR is converted from the ONNX file
        keep_onnx = False
    else:
        keep_onnx = "onnx" in formats
    required = formats if required is None else tuple(required)
    if any(f not in formats for f in required):
        raise BadInput(f"required formats must be among the exported ones ({', '.join(formats)}), "
                       f"got {', '.join(required)}")
    if task not in TASKS:
        raise BadInput(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not name or "/" in name or name.startswith("."):
        raise BadInput(f"name must be a plain file stem, got {name!r}")
    model = _load_model(model)
    example = _as_tensors(example_inputs, "example_inputs")
    input_names = list(input_names) if input_names else (
        ["input"] if len(example) == 1 else [f"input_{i}" for i in range(len(example))])
    if len(input_names) != len(example):
        raise BadInput(f"input_names has {len(input_names)} names for {len(example)} example inputs")
    dims = _dynamic_dims(input_names, example, dynamic_dims, static_shapes)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                example_out = [o for o in tree_leaves(model(*example)) if torch.is_tensor(o)]
            except (RuntimeError, TypeError, ValueError) as err:
                shapes = ", ".join(str(tuple(t.shape)) for t in example)
                raise BadInput(f"example_inputs (shapes {shapes}) do not fit the model: "
                               f"{str(err).splitlines()[0][:200]}") from None
        output_names = list(output_names) if output_names else (
            ["output"] if len(example_out) == 1 else [f"output_{i}" for i in range(len(example_out))])
        if len(output_names) != len(example_out):
            raise BadInput(f"output_names has {len(output_names)} names but the model returns "
                           f"{len(example_out)} tensors")
        parity_source = "held-out parity inputs"
        if parity_inputs is None:
            parity_inputs, parity_source = example, "example inputs only (no parity_inputs given)"
        parity_arrays = tuple(np.ascontiguousarray(t.numpy() if torch.is_tensor(t) else t)
                              for t in _as_tensors(parity_inputs, "parity_inputs"))
        if len(parity_arrays) != len(example):
            raise BadInput(f"parity_inputs has {len(parity_arrays)} arrays for {len(example)} model inputs")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.ndim != 1 or len(labels) != len(parity_arrays[0]) or labels.dtype.kind not in "iu":
                raise BadInput(f"labels: expected {len(parity_arrays[0])} integer class labels (one per parity "
                               f"input), got shape {labels.shape} of {labels.dtype}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out_dir))
        try:
            return _export_and_gate(model, example, work, out_dir, formats=formats, keep_onnx=keep_onnx, name=name,
                                    input_names=input_names, output_names=output_names, dims=dims,
                                    static_shapes=static_shapes, parity_arrays=parity_arrays,
                                    parity_source=parity_source, gate=gate, task=task, precision=precision,
                                    labels=labels, recorded_accuracy=recorded_accuracy, required=required)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        model.train(was_training)


def _export_and_gate(model, example, work: Path, out_dir: Path, *, formats, keep_onnx, name, input_names, output_names,
                     dims, static_shapes, parity_arrays, parity_source, gate, task, precision, labels,
                     recorded_accuracy, required) -> ExportResult:
    batch = example[0].shape[0] if static_shapes else PARITY_BATCH
    try:
        with _peak_outputs(model, precision == "fp16") as peaks:
            reference = _run_torch(model, parity_arrays, batch)
    except (RuntimeError, TypeError, ValueError) as err:
        shapes = ", ".join(str(a.shape) for a in parity_arrays)
        raise BadInput(f"parity_inputs (shapes {shapes}) do not fit the model: "
                       f"{str(err).splitlines()[0][:200]}") from None
    works, broken = task_check(reference[0], parity_arrays, task=task, labels=labels,
                               recorded_accuracy=recorded_accuracy)
    onnx_path = work / f"{name}.onnx"
    _export_onnx(model, example if static_shapes else _widen(example, input_names, dims), onnx_path,
                 input_names=input_names, dims=dims)
    graph = onnx.load(str(onnx_path))
    _name_outputs(graph.graph, output_names)
    rewrites = clean_qdq_graph(graph)
    onnx.checker.check_model(graph)
    expected = quantized_compute_nodes(graph)
    quantized = expected > 0
    if precision == "fp16":
        if quantized:
            raise BadInput(f"precision='fp16' applies to float models; {type(model).__name__} is fake-quantized "
                           "and exports as INT8 (QDQ)")
        graph = _to_fp16(graph)
    onnx.save(graph, str(onnx_path))
    model_problems = broken + _fp16_overflow(peaks)  # the model itself: every format fails with it
    result = ExportResult(onnx=None, openvino_xml=None, parity={}, int8_executed={}, quantized=quantized,
                          precision=precision, input_names=input_names, output_names=output_names, dynamic_dims=dims,
                          graph_rewrites=rewrites, problems=list(model_problems), task_check=works)
    failures: dict[str, list[str]] = {f: list(model_problems) for f in formats}

    def reject(runtime: str, problem: str) -> None:
        result.problems.append(f"{runtime}: {problem}")
        failures[runtime].append(problem)

    def check_parity(runtime: str, run) -> None:
        try:
            outputs = _run_runtime(run, parity_arrays, batch, static_shapes)
        except Exception as err:  # runtimes raise their own types; an artifact that cannot run is rejected
            reject(runtime, f"cannot run the parity inputs: {type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else ''}")
            return
        result.parity[runtime] = compare(reference, outputs, task=task)
        for problem in parity_failures(result.parity[runtime], task=task):
            reject(runtime, problem)

    def failed(runtime: str, step: str, err: Exception) -> None:
        reject(runtime, f"{step} failed: {type(err).__name__}: "
                        f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}")

    def gate_runtime(runtime: str, path: Path) -> None:
        try:
            session = cpu_session(path, instrumented=True)
        except BadInput as err:  # the runtime rejects the artifact: rejected, with its reason
            failed(runtime, "loading the model", err)
            return
        try:
            check_parity(runtime, lambda part: session.run(dict(zip(input_names, part))))
            int8, total = int8_counts(session.compute_ops())
        finally:
            session.close()
        result.int8_kernels[runtime] = {"kernels": int8, "compute_layers": total, "expected": expected}

    ov_dir = work / "openvino"
    for backend in (b for b in FORMATS if b in formats):  # each format converted (ONNX is already written), then gated
        try:
            artifact = _BACKENDS[backend](onnx_path, ov_dir, name=name, precision=precision)
        except Exception as err:  # converters raise their own types (OpenVINO on NaN scales, say)
            failed(backend, "converting the model", err)
        else:
            gate_runtime(backend, artifact)

    for runtime, counts in result.int8_kernels.items():
        ran = sum(counts["kernels"].values())
        counts["coverage"] = min(ran, expected) / expected if quantized else None
        result.int8_executed[runtime] = quantized and ran > 0
        if quantized and ran == 0:
            reject(runtime, f"none of the {expected} quantized layers runs on integer kernels "
                            "(the runtime dequantizes and computes in float)")
        elif quantized and ran < expected:
            result.warnings.append(f"{runtime}: {ran} of {expected} quantized layers run on integer kernels "
                                   f"({counts['kernels']}); the rest dequantize and compute in float")
    result.gate_passed = not result.problems
    result.rejected = {f: problems for f, problems in failures.items() if problems} if gate else {}
    stop = any(f in required for f in result.rejected)
    withheld = set(formats) if stop else set(result.rejected)
    evidence = {"name": name, "formats": list(formats), "task": task, "parity_source": parity_source,
                "parity": result.parity, "int8_executed": result.int8_executed, "int8_kernels": result.int8_kernels,
                "quantized": quantized, "precision": precision, "graph_rewrites": rewrites, "input_names": input_names,
                "output_names": output_names,
                "dynamic_dims": {k: {str(a): v for a, v in d.items()} for k, d in dims.items()},
                "static_shapes": static_shapes, "task_check": works,
                "gate": "passed" if result.gate_passed else "partial" if 0 < len(withheld) < len(formats) else "failed",
                "rejected": result.rejected,
                "problems": result.problems, "warnings": result.warnings}
    published = [f for f in formats if f not in withheld and (keep_onnx or f != "onnx")]
    if withheld:
        _remove_stale(out_dir, name, withheld, evidence=not published)
    _publish(work, out_dir, name=name, keep_onnx=keep_onnx and "onnx" not in withheld, result=result,
             openvino="openvino" not in withheld and (ov_dir / f"{name}.xml").is_file())  # a failed conversion has none
    if withheld:
        rejected = out_dir / "rejected" / name
        shutil.rmtree(rejected, ignore_errors=True)
        rejected.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), str(rejected))
        write_json(rejected / "gate.json", evidence)
        if stop:
            raise GateFailed(f"export gate failed for '{name}': {'; '.join(result.problems)} "
                             f"(rejected files kept in {rejected})")
    if published:
        result.report = write_json(out_dir / f"{name}.export.json", evidence)
    return result


def _remove_stale(out_dir: Path, name: str, formats, *, evidence: bool) -> None:
    """An earlier export's files of `formats` (and its <name>.export.json if `evidence`): they no longer match
    the model asked for. Only where that evidence says edgekd wrote them, never a user's own files."""
    if not _exported_here_before(out_dir / f"{name}.export.json"):
        return
    files = {"onnx": [out_dir / f"{name}.onnx"],
             "openvino": [out_dir / "openvino" / f"{name}.xml", out_dir / "openvino" / f"{name}.bin"]}
    for stale in [path for f in formats for path in files[f]] + ([out_dir / f"{name}.export.json"] if evidence else []):
        stale.unlink(missing_ok=True)


def _exported_here_before(evidence: Path) -> bool:
    """Whether `<name>.export.json` is edgekd's gate evidence: then the artifacts beside it are an earlier
    export's (stale now), never a user's own files of the same name."""
    try:
        record = json.loads(evidence.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"gate", "parity", "int8_executed"} <= set(record)


def _as_onnx(onnx_path: Path, ov_dir: Path, *, name: str, precision: str) -> Path:
    return onnx_path  # the graph every other format is converted from


def _as_openvino(onnx_path: Path, ov_dir: Path, *, name: str, precision: str) -> Path:
    import openvino as ov

    ov_dir.mkdir(exist_ok=True)
    xml = ov_dir / f"{name}.xml"
    with quiet_export():
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml),
                      compress_to_fp16=precision == "fp16")  # never silently: FP32 weights stay FP32
    return xml


# Export formats, each a backend of the same loop: convert from the ONNX graph, then gate on its runtime.
_BACKENDS = {"onnx": _as_onnx, "openvino": _as_openvino}


def _publish(work: Path, out_dir: Path, *, name: str, keep_onnx: bool, openvino: bool, result: ExportResult) -> None:
    """Move verified files into place; the .bin before the .xml that points at it."""
    if openvino:
        target = out_dir / "openvino"
        target.mkdir(exist_ok=True)
        os.replace(work / "openvino" / f"{name}.bin", target / f"{name}.bin")
        os.replace(work / "openvino" / f"{name}.xml", target / f"{name}.xml")
        result.openvino_xml = target / f"{name}.xml"
    if keep_onnx:
        os.replace(work / f"{name}.onnx", out_dir / f"{name}.onnx")
        result.onnx = out_dir / f"{name}.onnx"
