"""Which layers a latency measurement says to keep float: what edgekd.tune measures, what quantize applies."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerChoice:
    target: str
    runtime: str
    measured: bool
    reason: str | None  # why not measured / why the whole model stays float
    decisions: list[dict] = field(default_factory=list)  # one per layer kind, smallest first
    whole_model: dict | None = None  # {"fp32_ms", "all_int8_ms", "int8_ms" (with the choices), "all_float"}
    float_layers: tuple[str, ...] = ()  # pass as prepare(skip=...)

    def as_dict(self) -> dict:
        return asdict(self)

    def reason_for(self, name: str) -> str:
        if self.whole_model and self.whole_model.get("all_float"):
            return f"latency: INT8 model not faster on {self.target} ({self.reason})"
        for decision in self.decisions:
            if name in decision["layers"] and decision["measured"]:
                return (f"latency: model {decision['model_ms_kind_float']:.3f} ms with {decision['kind']} layers float "
                        f"vs {decision['model_ms_kind_int8']:.3f} ms INT8 on {self.target}")
        return f"latency choice for {self.target}"
