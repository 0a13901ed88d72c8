"""Structured pruning: fewer channels, FFN neurons, attention heads and layers, as a real smaller model.

Built on Torch-Pruning (`torch_pruning`): its `DependencyGraph` traces which layers must lose the
same channels together (residual sums, concats, depthwise/grouped convs with their batch norms,
squeeze-excite, q/k/v with the attention output), its importance classes score channels
(magnitude, batch-norm scale, first-order Taylor) and its layer functions cut the tensors.
What edgekd adds on top:

- Counts that fit edge kernels and survive iteration: every pruned group keeps a positive multiple
  of the target's `channel_multiple` (nearest multiple, never 0; Torch-Pruning 1.6.1 floors and
  then silently skips the group), iterative steps aim at fractions of the *initial* width (its
  head pruning over-prunes: 4 heads at 0.5 in 2 steps leaves 1), and a layer always keeps one head.
- Whole heads in Hugging Face BERT-style encoders: found by duck typing (`query`/`key`/`value`
  plus `num_attention_heads`), the module's head count and `all_head_size` updated, the config
  updated so `save_pretrained` -> `load_pretrained` reloads it (Transformers 5 dropped
  `prune_heads`), FFN neurons pruned alongside, and `drop_layers` for depth.
- PyTorch's own `nn.MultiheadAttention` (inside `nn.TransformerEncoderLayer` / `DecoderLayer` or
  used directly) first rebuilt from Linear projections (edgekd.nn_swap, same outputs, checked on
  the example inputs), so its heads, the FFN and the embedding width prune like a BERT's; the
  "prune" transform records the swap and replays it.
- Safe defaults found from the graph, not from names: layers whose outputs are the model's outputs
  (classifier, pooler, the residual stream of a transformer) are never narrowed; the stem is kept
  unless `keep_first_last=False`.
- Errors instead of silent damage: bad ratios and unknown layer names raise `BadInput`; a layer
  whose output the tracer cannot follow (.detach(), .numpy() in forward) is named, and a pruned
  model that no longer runs or changes its output shape is reported with the module and line.
- Iterative pruning with recovery: `steps` pruning rounds, each followed by `recovery(model, step)`
  (e.g. a short KD run with the unpruned teacher); Taylor importance from a calibration loss
  (`calibration_loss`, the KD loss when a teacher is given).
- A report of what it bought (parameters, MACs counted at the ATen level including attention, eager
  CPU latency, before/after per coupled group) and two ways to reload: the checkpoint transform
  "prune" (rebuild from the factory, reshape to the saved weights) and a `torch.export` program
  that loads without the model's code, checked for pickled payloads first.
"""

from edgekd.prune.core import PruneResult, drop_layers, prune
from edgekd.prune.loss import calibration_loss
from edgekd.prune.measure import count_params_macs
from edgekd.prune.portable import load_program, save_program
from edgekd.prune.pretrained import load_pretrained
from edgekd.prune.recovery import prune_with_recovery
from edgekd.prune.reshape import reshape_to_state_dict

__all__ = ["prune", "prune_with_recovery", "PruneResult", "count_params_macs", "drop_layers", "calibration_loss",
           "save_program", "load_program", "load_pretrained", "reshape_to_state_dict"]

from edgekd._callable import make_package_callable  # noqa: E402  (after the API it exposes)

make_package_callable(__name__, prune)
