"""Embedding tables stored as INT8 rows (weight-only): the word embeddings are half of a small text
encoder, so an INT8 artifact with a float table is still half float."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import torch
from torch import nn

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.export import export
from edgekd.models import ModelRef
from edgekd.quant import calibrate, checkpoint_transform, prepare
from edgekd.targets import QuantScheme


class Bag(nn.Module):
    """Token ids -> mean of their embeddings -> classes: the smallest model with a lookup table."""

    def __init__(self, vocab: int = 1000, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def bag() -> Bag:
    torch.manual_seed(0)
    return Bag().eval()


def _quantized():
    model = bag()
    ids = torch.randint(0, 1000, (16, 7), generator=torch.Generator().manual_seed(1))
    quantized = prepare(model=model, scheme=QuantScheme())
    calibrate(model=quantized, inputs=[ids])
    return model, quantized.eval(), ids


def test_tables_are_int8_rows_and_lookups_gather_before_scaling(tmp_path):
    model, quantized, ids = _quantized()
    table = quantized.emb.weight_quantizer
    assert table.enabled and table.scale.shape == (1000,) and quantized.edgekd_quant_plan["embeddings"] == ["emb"]
    with torch.no_grad():  # the rows land on an 8-bit grid of their own range: close, not equal
        assert not torch.equal(quantized(ids), model(ids))
        assert torch.allclose(quantized(ids), model(ids), atol=0.02)
    result = export(model=quantized, example_inputs=(ids,), out_dir=tmp_path, parity_inputs=ids.numpy(),
                    task="embedding")
    assert result.gate_passed and all(p["min_cosine"] > 0.9999 for p in result.parity.values())
    graph = onnx.load(str(result.onnx)).graph
    producers = {o: n for n in graph.node for o in n.output}
    lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[1] == graph.input[0].name]
    tables = {i.name: i for i in graph.initializer}
    assert any(tables[n.input[0]].data_type == onnx.TensorProto.INT8 for n in lookups if n.input[0] in tables)
    assert all(producers.get(n.input[0]) is None for n in lookups)  # no DequantizeLinear of the whole table
    assert result.onnx.stat().st_size < 1000 * 64 * 1.5  # one byte a row element, not four


def test_a_quantized_table_reloads_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bagmodels", sys.modules[__name__])
    _, quantized, ids = _quantized()
    path = save_checkpoint(tmp_path / "q.pt", quantized, ref=ModelRef("bagmodels:bag", {}),
                           transforms=[checkpoint_transform(quantized)])
    loaded = load_checkpoint(path, trusted_factories=["bagmodels:bag"]).model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids), quantized(ids))
    plan = dict(quantized.edgekd_quant_plan)
    plan.pop("embeddings")  # a plan written before tables were quantized keeps its table float
    from edgekd.quant.prepare import apply_plan

    assert type(apply_plan(bag(), plan).emb) is nn.Embedding
    assert np.isfinite(loaded.emb.weight_quantizer.scale.numpy()).all()
