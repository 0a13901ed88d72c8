"""QuantReport: what was quantized, how, and what stayed float and why (for logs and report.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from edgekd.quant.modules import FakeQuantizer
from edgekd.quant.prepare import plan_of, quant_layers


@dataclass
class QuantReport:
    scheme: dict
    weight_bits: int
    weight_bits_reason: str
    observer: str
    lsq: bool
    graph: str
    quantized: list[dict]
    float_layers: list[dict]
    uncalibrated: list[str] = field(default_factory=list)
    latency: dict | None = None
    # QAT returned its calibrated (PTQ) start because no epoch beat it on validation: the model is PTQ,
    # not QAT-trained. None where no QAT ran (PTQ, or a model kept float).
    kept_calibrated_start: bool | None = None
    smooth_alpha: float | None = None  # every Linear SmoothQuant-ed with this alpha before calibration (PTQ)
    embeddings: list[str] = field(default_factory=list)  # lookup tables stored as INT8 rows (weight-only)

    @classmethod
    def of(cls, model: nn.Module) -> "QuantReport":
        plan = plan_of(model)
        layers = quant_layers(model)
        quantized = []
        for entry in plan["layers"]:
            layer = layers.get(entry["name"])
            row = {k: entry[k] for k in ("name", "kind", "bn", "activation", "output_quantizer")}
            row["shares_input_with"] = entry["inputs_from"][0]
            if layer is not None and hasattr(layer, "weight_quantizer"):
                row["weight_scale_range"] = _scale_range(layer.weight_quantizer)
            quantized.append(row)
        return cls(scheme=plan["scheme"], weight_bits=plan["weight_bits"],
                   weight_bits_reason=plan["weight_bits_reason"], observer=plan["observer"], lsq=plan["lsq"],
                   graph=plan["graph"], quantized=quantized,
                   float_layers=list(plan["float"]), uncalibrated=list(plan.get("uncalibrated", [])),
                   latency=plan.get("latency"), kept_calibrated_start=plan.get("qat", {}).get("kept_calibrated_start"),
                   smooth_alpha=plan.get("smooth_alpha"), embeddings=list(plan.get("embeddings", [])))

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        w, a = self.scheme["weights"], self.scheme["activations"]
        lines = [
            f"quantized {len(self.quantized)} layers: weights {w['dtype']} {self.weight_bits}-bit "
            f"{'symmetric' if w['symmetric'] else 'asymmetric'} {'per-channel' if w['per_channel'] else 'per-tensor'}, "
            f"activations {a['dtype']} {'symmetric' if a['symmetric'] else 'asymmetric'} per-tensor "
            f"({self.observer} observer{', LSQ' if self.lsq else ''}; {self.weight_bits_reason})",
            f"placement from {self.graph}; {sum(1 for q in self.quantized if q['bn'])} batch norms folded",
        ]
        if self.smooth_alpha is not None:
            lines.append(f"SmoothQuant (alpha {self.smooth_alpha}): activation outlier channels moved into the weights")
        if self.kept_calibrated_start:
            lines.append("QAT kept its calibrated start: no QAT epoch beat it on validation, so this is the PTQ model")
        lines += [f"float: {f['name']}: {f['reason']}" for f in self.float_layers]
        lines += [f"uncalibrated (never ran, left float): {name}" for name in self.uncalibrated]
        return "\n".join(lines)


def _scale_range(q: FakeQuantizer) -> list[float]:
    scale = q.effective_scale().detach()
    return [float(scale.min()), float(scale.max())]
