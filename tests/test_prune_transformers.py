"""Pruning Hugging Face BERT-style encoders: whole heads, FFN neurons, whole layers, reload."""

import json

import pytest
import torch
from transformers import BertConfig, BertModel

from edgekd.errors import BadInput
from edgekd.prune import count_params_macs, drop_layers, load_pretrained, prune, reshape_to_state_dict

IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
FFN_LAYERS = ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]


def tiny_bert(attn: str = "sdpa") -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128,
                        vocab_size=100, max_position_embeddings=32, attn_implementation=attn)
    return BertModel(config).eval()


def _kept_heads(original: torch.nn.Linear, pruned: torch.nn.Linear, head_size: int) -> list[int]:
    """Which original heads the pruned query projection still holds, found by their weights."""
    heads = original.weight.view(-1, head_size, original.in_features)
    return [next(h for h in range(len(heads)) if torch.equal(heads[h], block))
            for block in pruned.weight.view(-1, head_size, pruned.in_features)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_heads_compute_the_original_attention_with_the_removed_heads_zeroed(attn):
    model = tiny_bert(attn)
    result = prune(model=model, example_inputs=IDS, ratio=0.5, ignore_layers=FFN_LAYERS)
    pruned = result.model
    removed = {}
    for i, (before, after) in enumerate(zip(model.encoder.layer, pruned.encoder.layer)):
        attention = after.attention.self
        assert (attention.num_attention_heads, attention.all_head_size, attention.attention_head_size) == (2, 32, 16)
        assert after.attention.output.dense.in_features == 32
        kept = _kept_heads(before.attention.self.query, attention.query, 16)
        assert kept == result.report["groups"][i]["kept_heads"]
        removed[i] = sorted(set(range(4)) - set(kept))

    def zero_removed_heads(layer):  # the reference: the original model, removed heads' context zeroed
        def hook(_module, args):
            context = args[0].clone().view(*args[0].shape[:-1], 4, 16)
            context[..., removed[layer], :] = 0
            return (context.flatten(-2),)
        return hook

    handles = [layer.attention.output.dense.register_forward_pre_hook(zero_removed_heads(i))
               for i, layer in enumerate(model.encoder.layer)]
    with torch.no_grad():
        reference = model(IDS).last_hidden_state
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(pruned(IDS).last_hidden_state, reference, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(IDS).last_hidden_state, reference, atol=1e-3)  # the heads did matter


def test_ffn_neurons_and_heads_are_pruned_and_the_config_follows(tmp_path):
    model = tiny_bert()
    result = prune(model=model, example_inputs=IDS, ratio=0.5, steps=2, channel_multiple=16)
    pruned = result.model
    assert [layer.intermediate.dense.out_features for layer in pruned.encoder.layer] == [64, 64]
    assert [layer.output.dense.in_features for layer in pruned.encoder.layer] == [64, 64]
    assert [layer.attention.self.num_attention_heads for layer in pruned.encoder.layer] == [2, 2]  # 2 steps, not 1
    assert pruned.embeddings.word_embeddings.embedding_dim == 64 and pruned.pooler.dense.out_features == 64
    params, macs = count_params_macs(model=pruned, example_inputs=IDS)
    assert params < 0.6 * result.report["before"]["params"] and macs == result.report["after"]["macs"]
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["intermediate_size"] == 64 and saved["num_attention_heads"] == 4
    assert saved["edgekd_pruning"]["attention_heads"] == {"encoder.layer.0.attention.self": 2,
                                                         "encoder.layer.1.attention.self": 2}
    reloaded = load_pretrained(path=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).last_hidden_state, pruned(IDS).last_hidden_state)


def test_attention_flops_are_counted_for_fused_and_eager_attention():
    macs = {attn: count_params_macs(model=tiny_bert(attn), example_inputs=IDS)[1] for attn in ("sdpa", "eager")}
    layers, batch, length, heads, head_size = 2, 2, 8, 4, 16
    linear = layers * batch * length * (4 * 64 * 64 + 2 * 64 * 128) + batch * 64 * 64  # q,k,v,o, FFN; pooler on CLS
    attention = layers * batch * heads * length * length * head_size * 2  # QK^T and AV
    assert macs["sdpa"] == macs["eager"] == linear + attention


def test_prune_heads_false_leaves_attention_whole():
    result = prune(model=tiny_bert(), example_inputs=IDS, ratio=0.5, prune_heads=False)
    assert [layer.attention.self.query.out_features for layer in result.model.encoder.layer] == [64, 64]
    assert [layer.intermediate.dense.out_features for layer in result.model.encoder.layer] == [64, 64]


def test_drop_layers_keeps_the_chosen_blocks_and_reloads(tmp_path):
    model = tiny_bert()
    result = drop_layers(model=model, keep=[1])
    dropped = result.model
    assert len(dropped.encoder.layer) == 1 and dropped.config.num_hidden_layers == 1
    assert model.config.num_hidden_layers == 2  # the input model is untouched
    assert torch.equal(dropped.encoder.layer[0].output.dense.weight, model.encoder.layer[1].output.dense.weight)
    assert result.report["layers"] == {"stack": "encoder.layer", "before": 2, "after": 1, "kept": [1]}
    # the checkpoint transform replays the cut on a freshly built two-layer model
    fresh = reshape_to_state_dict(tiny_bert(), result.transform["config"], dropped.state_dict())
    fresh.load_state_dict(dropped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS).last_hidden_state, dropped(IDS).last_hidden_state)
    # depth alone is something stock from_pretrained can rebuild
    dropped.save_pretrained(tmp_path)
    stock = BertModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(IDS).last_hidden_state, dropped(IDS).last_hidden_state)


def test_drop_layers_bad_input():
    with pytest.raises(BadInput, match=r"increasing indices in \[0, 1\]"):
        drop_layers(model=tiny_bert(), keep=[2])
    with pytest.raises(BadInput, match="non-empty"):
        drop_layers(model=tiny_bert(), keep=[])
    with pytest.raises(BadInput, match="no such module"):
        drop_layers(model=tiny_bert(), keep=[0], layers="encoder.layers")
    with pytest.raises(BadInput, match="expected one stack of transformer layers, found none"):
        drop_layers(model=torch.nn.Sequential(torch.nn.Linear(2, 2)), keep=[0])
