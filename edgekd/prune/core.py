"""`prune` and `drop_layers`: a smaller real `nn.Module`, its report, and how to reload it."""

from __future__ import annotations

import copy
import difflib
import os
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from edgekd.errors import NOT_INPUT_ERRORS, BadInput
from edgekd.nn_swap import swap_attention
from edgekd.prune.attention import find_attention
from edgekd.prune.measure import Inputs, call_model, latency_p50_ms, module_macs
from edgekd.prune.planner import ROOT_TYPES, Planner
from edgekd.prune.reshape import record_pretrained_config, shape_config
from edgekd.prune.stack import find_layer_stack, keep_layers

IMPORTANCES = ("magnitude", "bn_scale", "taylor")
_LAYER_TYPES = ROOT_TYPES + (nn.Embedding,)
_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass
class PruneResult:
    """The smaller model, what it cost before and after, and the checkpoint transform that rebuilds it."""

    model: nn.Module  # the pruned model, in eval mode
    report: dict  # before/after cost and per-group widths (PruneReport as a dict)
    transform: dict  # {"name": "prune", "config": ...} for save_checkpoint(transforms=[...])


@dataclass
class Cost:
    params: int
    macs: int | None = None
    latency_p50_ms: float | None = None  # eager PyTorch on this host's CPU, batch of example_inputs


@dataclass
class GroupReport:
    group: str  # root layer of a coupled group
    kind: str  # "channels" (conv channels / linear neurons) or "heads"
    modules: list[str]  # the layers whose outputs the group prunes
    before: int  # channels or heads
    after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    kept_heads: list[int] | None = None  # original indices of the kept heads


@dataclass
class PruneReport:
    ratio: float
    head_ratio: float  # the fraction of each attention's heads removed (the ratio, unless given apart or 0)
    importance: str
    global_pruning: bool
    channel_multiple: int
    steps: int
    prune_heads: bool
    protected: list[str]  # layers whose outputs were kept whole (first/last layers, ignore_layers)
    before: Cost
    after: Cost
    params_ratio: float
    macs_ratio: float
    groups: list[GroupReport] = field(default_factory=list)
    # nn.MultiheadAttention rebuilt from Linear layers ("swapped"), and why any was not ("refused": {name: why})
    attention_swap: dict = field(default_factory=dict)


def _tensors(output) -> list[torch.Tensor]:
    """Every tensor in a model output: a tensor, tuple/list, dict or Hugging Face ModelOutput."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _tensors(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _tensors(value)]
    return []


def _sum_outputs(output) -> torch.Tensor:
    """One scalar that depends on every floating output, so the tracer sees all of them."""
    return sum(t.sum() for t in _tensors(output) if t.is_floating_point())


def _where_it_failed(err: Exception, module: tuple[str, str] | None) -> str:
    """' in module 'x' (Type) at file:line `code`: Error: message' for an exception raised in a forward pass."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} `{frames[-1].line}`" if frames else ""
    inside = f" in module '{module[0]}' ({module[1]})" if module else ""
    return f"{inside}{where}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"


def _run_located(model: nn.Module, inputs: Inputs, failure: str):
    """Forward pass; on failure, BadInput starting with `failure`, naming the module and line of code."""
    running: list[tuple[str, str]] = []
    names = {module: name or "<root>" for name, module in model.named_modules()}

    def enter(module, _args) -> None:
        running.append((names[module], type(module).__name__))

    def leave(_module, _args, _output) -> None:  # a hook that returns a value would replace the output
        running.pop()

    handles = [m.register_forward_pre_hook(enter) for m in model.modules()]
    handles += [m.register_forward_hook(leave) for m in model.modules()]
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:
        raise BadInput(f"{failure}{_where_it_failed(err, running[-1] if running else None)}") from None
    finally:
        for handle in handles:
            handle.remove()


def _shapes(output) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(output)]


def _check_swap(model: nn.Module, inputs: Inputs, expected) -> None:
    """The model with Linear-based attention computes what it computed with nn.MultiheadAttention."""
    failure = (f"{type(model).__name__} no longer runs after replacing nn.MultiheadAttention by Linear layers "
               "(does its code read the attention's packed in_proj_weight?)")
    for got, want in zip(_tensors(_run_located(model, inputs, failure)), _tensors(expected)):
        tolerance = 1e-5 * (1 + float(want.abs().max()))
        if got.is_floating_point() and not torch.allclose(got, want, rtol=1e-4, atol=tolerance):
            raise BadInput(f"replacing nn.MultiheadAttention by Linear layers changed {type(model).__name__}'s outputs "
                           f"(max difference {float((got - want).abs().max()):.3g}); does its code read the "
                           "attention's weights directly?")


def _resolve_ignored(model: nn.Module, ignore_layers: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    resolved = []
    for name in ignore_layers:
        if name not in modules or not name:
            near = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
            hint = f" (close matches: {', '.join(near)})" if near else ""
            raise BadInput(f"ignore_layers: no layer named '{name}' in {type(model).__name__}{hint}")
        resolved.extend(modules[name].modules())
    return resolved


def _boundary_layers(model: nn.Module, graph: tp.DependencyGraph) -> tuple[set[nn.Module], set[nn.Module]]:
    """(first, last) layers: reached from the inputs, or reaching an output, through no other layer.

    The last layers' outputs are the model's output shape; the first are the stem. The walk from
    the inputs starts at the model's own modules: graph nodes without inputs that are ops come
    from parameters (a Linear's weight transpose), not from the input.
    """

    def walk(starts, step) -> set[nn.Module]:
        found, seen, todo = set(), set(), list(starts)
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, _LAYER_TYPES):
                found.add(node.module)
            else:
                todo.extend(step(node))
        return found

    own = set(model.modules())
    nodes = list(graph.module2node.values())
    first = walk([n for n in nodes if not n.inputs and n.module in own], lambda n: n.outputs)
    last = walk([n for n in nodes if not n.outputs], lambda n: n.inputs)
    return first, last


def _trace(model: nn.Module, inputs: Inputs) -> tp.DependencyGraph:
    """The dependency graph; BadInput when a layer that ran is invisible to it."""
    executed: list[nn.Module] = []

    def ran(module, _args, _output) -> None:
        executed.append(module)

    handles = [m.register_forward_hook(ran) for m in model.modules() if isinstance(m, _LAYER_TYPES)]
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, forward_fn=call_model, output_transform=_sum_outputs, verbose=False)
    except NOT_INPUT_ERRORS:
        raise
    except Exception as err:
        raise BadInput(f"cannot trace {type(model).__name__} for pruning{_where_it_failed(err, None)}") from None
    finally:
        for handle in handles:
            handle.remove()
    names = {module: name for name, module in model.named_modules()}
    lost = [m for m in dict.fromkeys(executed) if m not in graph.module2node]
    if lost:
        raise BadInput(
            f"cannot prune {type(model).__name__}: the dependency tracer cannot follow the output of layer "
            f"'{names[lost[0]]}' ({type(lost[0]).__name__}) to the model output; an op after it leaves autograd "
            "(.detach(), .numpy(), .item(), an integer cast or torch.no_grad() inside forward)")
    return graph


def _scorers(importance: str, model: nn.Module):
    magnitude = tp.importance.GroupMagnitudeImportance(p=2)
    if importance == "bn_scale":
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise BadInput(f"importance 'bn_scale': {type(model).__name__} has no batch-norm layers "
                           "(use 'magnitude' or 'taylor')")
        return tp.importance.BNScaleImportance(), magnitude  # groups without batch norm: magnitude
    if importance == "taylor":
        return tp.importance.GroupTaylorImportance(), magnitude
    return magnitude, magnitude


def _accumulate_gradients(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> None:
    """Gradients of the calibration loss, for first-order Taylor importance; untouched weights get zeros."""
    model.zero_grad(set_to_none=True)
    for param in model.parameters():
        param.requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or loss.grad_fn is None:
            raise BadInput("loss_fn(model) must return a scalar tensor that depends on the model's weights, "
                           f"got {type(loss).__name__}{'' if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
        loss.backward()
    for param in model.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def _adopt(model: nn.Module, recovered: nn.Module, step: int) -> None:
    """Copy a recovery's weights into the tracked model, so the dependency graph stays valid."""
    if recovered is model:
        return
    if not isinstance(recovered, nn.Module):
        raise BadInput(f"recovery(model, {step}) must return an nn.Module, got {type(recovered).__name__}")
    try:
        model.load_state_dict(recovered.state_dict())
    except RuntimeError as err:
        raise BadInput(f"recovery(model, {step}) returned a model of a different shape: "
                       f"{str(err).splitlines()[0][:200]}") from None


def _cost(model: nn.Module, inputs: Inputs) -> tuple[Cost, dict[str, int]]:
    macs, per_module = module_macs(model, inputs)
    params = sum(p.numel() for p in model.parameters())
    return Cost(params, macs, latency_p50_ms(model, inputs)), per_module


def _own_params(modules: dict[str, nn.Module], names: list[str]) -> int:
    return sum(p.numel() for n in names for p in modules[n].parameters(recurse=False))


def _is_fraction(value, *, zero_ok: bool) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and (0 <= value if zero_ok else 0 < value) and value < 1)


def _check_args(ratio, head_ratio, prune_heads, channel_multiple, importance, steps, loss_fn, recovery) -> None:
    if head_ratio is not None and not (prune_heads and _is_fraction(head_ratio, zero_ok=True)):
        raise BadInput(f"head_ratio must be a number in [0, 1) (the fraction of each attention's heads to remove) "
                       f"with prune_heads=True, got {head_ratio!r}")
    if not _is_fraction(ratio, zero_ok=bool(head_ratio)):
        raise BadInput(f"ratio must be a number in (0, 1) (the fraction of channels/heads/neurons to remove; 0 when "
                       f"head_ratio removes heads), got {ratio!r}")
    if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, int) or channel_multiple < 1:
        raise BadInput(f"channel_multiple must be an integer >= 1, got {channel_multiple!r}")
    if importance not in IMPORTANCES:
        raise BadInput(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BadInput(f"steps must be an integer >= 1, got {steps!r}")
    if importance == "taylor" and loss_fn is None:
        raise BadInput("importance 'taylor' needs loss_fn(model) -> scalar loss on calibration data "
                       "(edgekd.prune.calibration_loss builds one)")
    if importance != "taylor" and loss_fn is not None:
        raise BadInput(f"loss_fn is only used by importance 'taylor', not {importance!r}")
    if recovery is not None and not callable(recovery):
        raise BadInput(f"recovery must be a callable (model, step) -> model, got {type(recovery).__name__}")


def prune(*, model: nn.Module, example_inputs: Inputs, ratio: float, channel_multiple: int = 1,
          importance: str = "magnitude", global_pruning: bool = False, ignore_layers: Sequence[str] = (),
          keep_first_last: bool = True, steps: int = 1, recovery: Callable[[nn.Module, int], nn.Module] | None = None,
          loss_fn: Callable[[nn.Module], torch.Tensor] | None = None, prune_heads: bool = True,
          head_ratio: float | None = None) -> PruneResult:
    """Structurally prune a copy of `model` by `ratio` of its channels, FFN neurons and attention heads.

    `head_ratio` removes a different fraction of the heads than of the channels (a depth x width
    student sizes its FFN and its heads apart); with it, `ratio` may be 0.

    `ratio` is reached in `steps` equal steps, each followed by `recovery(model, step)` (step counts
    from 1; e.g. a short KD run) whose returned weights are kept. Every pruned group keeps a positive
    multiple of `channel_multiple` channels. The model's output layers are never narrowed (they are its
    output shape); `keep_first_last` also keeps the stem's outputs. `model` itself is not modified.
    """
    _check_args(ratio, head_ratio, prune_heads, channel_multiple, importance, steps, loss_fn, recovery)
    head_ratio = 0.0 if not prune_heads else ratio if head_ratio is None else head_ratio
    work = copy.deepcopy(model).eval()
    outputs = _run_located(work, example_inputs, f"{type(model).__name__} does not run on example_inputs")
    reference = _shapes(outputs)
    before, macs_before = _cost(work, example_inputs)  # latency as the model runs (fused attention)
    swap = swap_attention(work)  # q/k/v/out as Linear layers the dependency graph can split into heads
    if swap.swapped:
        _check_swap(work, example_inputs, outputs)
        # counted on the Linear projections: module hooks do not see nn.MultiheadAttention's fused matmuls,
        # so the fused model's count missed most of the compute (a small ViT: 17k MACs counted fused)
        before.macs, macs_before = module_macs(work, example_inputs)
    graph = _trace(work, example_inputs)
    first, last = _boundary_layers(work, graph)
    protected = set(_resolve_ignored(work, ignore_layers)) | last | (first if keep_first_last else set())
    attention = find_attention(work)
    scorer, fallback = _scorers(importance, work)
    planner = Planner(model=work, graph=graph, protected=list(protected), attention=attention, scorer=scorer,
                      fallback_scorer=fallback, channel_multiple=channel_multiple, global_pruning=global_pruning,
                      prune_heads=prune_heads)
    modules = dict(work.named_modules())
    own_params_before = {name: _own_params(modules, [name]) for name in modules}
    broken = (f"the pruned {type(model).__name__} no longer runs: its forward has an op the dependency "
              "tracer cannot follow (a hard-coded channel count?), failing")
    for step in range(1, steps + 1):
        if importance == "taylor":
            _accumulate_gradients(work, loss_fn)
        planner.step(ratio * step / steps, head_ratio=head_ratio * step / steps)
        work.zero_grad(set_to_none=True)
        for att in attention:
            att.sync()
        if _shapes(_run_located(work, example_inputs, broken)) != reference:
            raise BadInput(f"pruning changed {type(model).__name__}'s output shapes from {reference}: an op in its "
                           "forward is not one the dependency tracer can follow")
        if recovery is not None:
            _adopt(work, recovery(work, step), step)
            work.eval()
    record_pretrained_config(work)
    after, macs_after = _cost(work, example_inputs)
    if after.params >= before.params:
        raise BadInput(f"nothing was pruned from {type(model).__name__} at ratio {ratio}: every prunable layer is "
                       f"protected (ignore_layers, first/last layers) or too small to lose a block of "
                       f"{channel_multiple} channel(s)")
    names = {module: name for name, module in work.named_modules()}
    report = PruneReport(
        ratio=float(ratio), head_ratio=float(head_ratio), importance=importance, global_pruning=global_pruning,
        channel_multiple=channel_multiple, steps=steps, prune_heads=prune_heads,
        protected=sorted(names[m] for m in protected if m in names and isinstance(m, _LAYER_TYPES)),
        before=before, after=after, params_ratio=after.params / before.params,
        macs_ratio=after.macs / before.macs if before.macs else 1.0,
        groups=_group_reports(planner, graph, own_params_before, macs_before, macs_after),
        attention_swap={"swapped": swap.swapped, "refused": swap.refused} if swap.swapped or swap.refused else {})
    return PruneResult(model=work.eval(), report=asdict(report), transform={"name": "prune", "config": shape_config(work)})


def _group_reports(planner: Planner, graph: tp.DependencyGraph, own_params_before: dict[str, int],
                   macs_before: dict[str, int], macs_after: dict[str, int]) -> list[GroupReport]:
    modules = dict(planner.model.named_modules())
    reports = []
    for name, plan in planner.plans.items():
        heads = plan.kind == "heads"
        reports.append(GroupReport(
            group=name, kind=plan.kind, modules=plan.modules, before=plan.initial * plan.channel_groups,
            after=plan.attention.num_heads if heads else graph.get_out_channels(modules[name]),
            params_before=sum(own_params_before[m] for m in plan.modules),
            params_after=_own_params(modules, plan.modules),
            macs_before=sum(macs_before.get(m, 0) for m in plan.modules),
            macs_after=sum(macs_after.get(m, 0) for m in plan.modules),
            kept_heads=list(plan.kept_heads) if heads else None))
    return reports


def drop_layers(*, model: nn.Module, keep: Sequence[int], layers: str | None = None) -> PruneResult:
    """A copy of a transformer keeping only blocks `keep` (indices, increasing) of its layer stack.

    `layers` names the stack (e.g. "encoder.layer"); by default the one stack of blocks that hold
    self-attention. The transform replays the cut when a checkpoint is reloaded.
    """
    if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence):
        raise BadInput(f"keep must be a list of layer indices, got {keep!r}")
    work = copy.deepcopy(model).eval()
    path, stack = find_layer_stack(work, layers)
    count = len(stack)
    params_before = sum(p.numel() for p in work.parameters())
    keep_layers(work, path, keep)
    record_pretrained_config(work)
    report = {"layers": {"stack": path, "before": count, "after": len(keep), "kept": list(keep)},
              "before": asdict(Cost(params_before)), "after": asdict(Cost(sum(p.numel() for p in work.parameters())))}
    return PruneResult(model=work, report=report,
                       transform={"name": "prune", "config": shape_config(work, kept_layers={path: list(keep)})})
