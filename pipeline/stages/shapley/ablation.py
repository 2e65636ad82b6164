"""The model side of Neuron Shapley: the network cut before its first player layer, and the metric
of the network with some units replaced by their mean activation (mean ablation).

The forward is traced with torch.fx (player layers kept as leaves) and split into a prefix, run
once per evaluation image to cache every value the rest of the network needs (the output of the
first player layer and, say, a residual branch that skips it), and a suffix that every
evaluation runs. The first player layer runs only in the prefix: its units are ablated in its cached
output, so an evaluation of a single player layer runs none of the layer itself. A model fx cannot
trace keeps the whole forward as its suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

METRICS = ("accuracy", "cross_entropy")


class _PlayersAsLeaves(fx.Tracer):
    def __init__(self, players: Sequence[str]) -> None:
        super().__init__()
        self.players = set(players)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.players or super().is_leaf_module(m, qualname)


@dataclass
class Split:
    """`suffix(*prefix(x))` equals `model(x)`; `traced` is False when fx could not trace the model.
    `outputs`: player layer -> the position among the prefix's values of that layer's output (its units are
    ablated there, not by a hook in the suffix)."""

    prefix: nn.Module
    suffix: nn.Module
    traced: bool
    outputs: dict[str, int] = field(default_factory=dict)


class _Whole(nn.Module):
    """The untraceable fallback: the prefix passes the input through, the suffix is the model."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


def whole_model(model: nn.Module) -> Split:
    """No cut: every evaluation runs the whole model (the fallback, and the benchmark's baseline)."""
    return Split(_Whole(), model, False)


def split_model(model: nn.Module, players: Sequence[str]) -> Split:
    """Cut the forward just after the first call of any player layer."""
    try:
        tracer = _PlayersAsLeaves(players)
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: run the whole model
        return whole_model(model)
    nodes = list(graph.nodes)
    first = next((i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in set(players)), None)
    if first is None or sum(n.op == "call_module" and n.target == nodes[first].target for n in nodes) > 1:
        return split_before(model, nodes, first) if first is not None else whole_model(model)  # a layer called twice
    later = set(nodes[first + 1:])
    cut = [n for n in nodes[:first + 1] if n.op != "get_attr" and any(u in later for u in n.users)]
    if nodes[first] not in cut:  # nothing reads the player's output: there is nothing to ablate after it
        return split_before(model, nodes, first)
    first += 1
    split = _cut(model, nodes, first, cut)
    split.outputs = {nodes[first - 1].target: cut.index(nodes[first - 1])}
    return split


def split_before(model: nn.Module, nodes: list[fx.Node], first: int) -> Split:
    """Cut just before node `first` (a player layer): the player runs, and is ablated by its hook, in the suffix."""
    later = set(nodes[first:])
    return _cut(model, nodes, first, [n for n in nodes[:first] if n.op != "get_attr" and any(u in later for u in n.users)])


def _cut(model: nn.Module, nodes: list[fx.Node], first: int, cut: list[fx.Node]) -> Split:
    """The prefix (nodes before `first`, returning the values of `cut`) and the suffix (the rest, taking them)."""
    pre, env = fx.Graph(), {}
    for n in nodes[:first]:
        env[n] = pre.node_copy(n, lambda a: env[a])
    pre.output(tuple(env[n] for n in cut))
    suf, env2 = fx.Graph(), {n: None for n in cut}
    for n in cut:
        env2[n] = suf.placeholder(n.name)

    def arg(a: fx.Node) -> fx.Node:
        if a not in env2:  # a parameter or buffer read before the cut: read it again
            env2[a] = suf.node_copy(a)
        return env2[a]

    for n in nodes[first:]:
        env2[n] = suf.node_copy(n, arg)
    return Split(fx.GraphModule(model, pre), fx.GraphModule(model, suf), True)


@dataclass
class EvalSet:
    """The evaluation images as the suffix consumes them: per fixed batch, the cut values and labels."""

    cuts: list[tuple]  # per batch: the prefix's outputs
    labels: list[torch.Tensor]  # per batch: int64 class indices

    @property
    def images(self) -> int:
        return sum(len(y) for y in self.labels)


def cache_eval_set(split: Split, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> EvalSet:
    """Run the prefix once over (inputs, labels) batches."""
    cuts, labels = [], []
    with torch.inference_mode():
        for inputs, y in batches:
            cuts.append(tuple(v.clone() if isinstance(v, torch.Tensor) else v for v in split.prefix(inputs)))
            labels.append(y)
    return EvalSet(cuts, labels)


class Ablator:
    """V(removed): the metric of the suffix with the removed units set to their mean activation.

    `layers` lists (module path, units); players are numbered layer after layer. Several coalitions
    are evaluated in one forward (the cached batch repeated, each copy with its own units removed).
    """

    def __init__(self, split: Split, layers: Sequence[tuple[str, int]], mean_maps: Sequence[np.ndarray],
                 eval_set: EvalSet, metric: str, device: str = "cpu") -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        self.split, self.eval_set, self.metric, self.device = split, eval_set, metric, device
        self.offsets = np.cumsum([0] + [units for _, units in layers])
        self.means = [torch.tensor(np.asarray(m, np.float32), device=device) for m in mean_maps]
        self.masks: list[torch.Tensor | None] = [None] * len(layers)
        modules = dict(split.suffix.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(i))
                        for i, (name, _) in enumerate(layers) if name not in split.outputs]
        self.cached = {split.outputs[name]: i for i, (name, _) in enumerate(layers) if name in split.outputs}
        self.evaluations = 0

    @property
    def players(self) -> int:
        return int(self.offsets[-1])

    def _hook(self, index: int):
        def hook(_module: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor | None:
            return None if self.masks[index] is None else self._ablate(index, out.clone())  # `out` may alias an input
        return hook

    def _ablate(self, index: int, out: torch.Tensor) -> torch.Tensor:
        """`out` (a player layer's output for the repeated batch), its removed units set to their mean, in place:
        only the removed (row, unit) maps are written (a broadcast `where` rewrites all of them, several times slower)."""
        rows, units = self.masks[index].nonzero(as_tuple=True)
        mean = self.means[index] if out.dim() == 4 else self.means[index].reshape(len(self.means[index]), -1)[:, 0]
        out[rows, units] = mean[units].to(out.dtype)
        return out

    def evaluate(self, removed: np.ndarray) -> np.ndarray:
        """float64 [C]: the metric for each row of `removed` (bool [C, players])."""
        removed = np.atleast_2d(np.asarray(removed, bool))
        c = len(removed)
        totals = np.zeros(c)
        count = 0
        with torch.inference_mode():
            for cut, y in zip(self.eval_set.cuts, self.eval_set.labels):
                b = len(y)
                rows = torch.as_tensor(np.repeat(removed, b, axis=0), device=self.device)  # [C*B, players]
                for i in range(len(self.masks)):
                    block = rows[:, self.offsets[i]:self.offsets[i + 1]]
                    self.masks[i] = block if bool(block.any()) else None
                inputs = [v.repeat(c, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) else v for v in cut]
                for at, i in self.cached.items():  # `repeat` made a copy: the cache is never written
                    if self.masks[i] is not None:
                        self._ablate(i, inputs[at])
                logits = self.split.suffix(*inputs).float().reshape(c, b, -1)
                totals += self._score(logits, y.to(self.device)).cpu().double().numpy()
                count += b
        self.masks = [None] * len(self.masks)
        self.evaluations += c
        return totals / max(count, 1)

    def _score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per coalition, the sum over the batch: correct predictions, or minus the cross-entropy."""
        if self.metric == "accuracy":
            return (logits.argmax(dim=2) == y[None]).sum(dim=1)
        logp = F.log_softmax(logits, dim=2)
        return logp.gather(2, y[None, :, None].expand(len(logits), -1, 1))[..., 0].sum(dim=1)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
