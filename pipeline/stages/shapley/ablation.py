"""The model side of Neuron Shapley: the network cut before its first player layer, and the metric
of the network with some units replaced by their mean activation (mean ablation).

The forward is traced with torch.fx (player layers kept as leaves) and split into a prefix, run
once per evaluation image to cache every value the rest of the network needs (the output of the
first player layer and, say, a residual branch that skips it), and a suffix that every
evaluation runs. The first player layer runs only in the prefix, and so do the per-channel
operations after it (ReLU, pooling: sites.py): its units are ablated in the cached value there, so an
evaluation of a single player layer runs none of the layer itself. A model fx cannot trace keeps the
whole forward as its suffix.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.inputs.features import layer_modules
from pipeline.inputs.layouts import units_axis_1
from pipeline.stages.shapley.sites import AblationPoint, ablate, chain, chain_module, insert_points, site_value

METRICS = ("accuracy", "cross_entropy")
FORWARD_BYTES = {False: 4 << 20, True: 1 << 30}  # cached values per suffix forward, on CPU (about a cache) and a GPU


class _PlayersAsLeaves(fx.Tracer):
    def __init__(self, players: Sequence[str]) -> None:
        super().__init__()
        self.players = set(players)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.players or super().is_leaf_module(m, qualname)


@dataclass
class Split:
    """`suffix(*prefix(x))` equals `model(x)`; `traced` is False when fx could not trace the model.

    Where each player layer's units are ablated: `outputs` (the first player) the position among the prefix's
    values of its site's value; `points` (later players) the AblationPoint after their site in the suffix;
    `chains` the module from a player's output to its site (see sites.py). A player in none of them is ablated
    by a forward hook on its module."""

    prefix: nn.Module
    suffix: nn.Module
    traced: bool
    outputs: dict[str, int] = field(default_factory=dict)
    points: dict[str, AblationPoint] = field(default_factory=dict)
    chains: dict[str, nn.Module] = field(default_factory=dict)


class _Whole(nn.Module):
    """The untraceable fallback: the prefix passes the input through, the suffix is the model."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


def whole_model(model: nn.Module) -> Split:
    """No cut: every evaluation runs the whole model (the fallback, and the benchmark's baseline)."""
    return Split(_Whole(), model, False)


def split_model(model: nn.Module, players: Sequence[str], channels_last: frozenset[str] = frozenset()) -> Split:
    """Cut the forward just after the site of the first call of any player layer (its output, past the
    per-channel operations that follow it); the later players are ablated at their sites in the suffix.
    `channels_last`: the players whose units are on the last axis (NHWC, tokens, windows)."""
    try:
        graph = _PlayersAsLeaves(players).trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: run the whole model
        return whole_model(model)
    nodes = list(graph.nodes)
    calls = [n for n in nodes if n.op == "call_module" and n.target in set(players)]
    if not calls:
        return whole_model(model)
    first = calls[0]
    if sum(n.target == first.target for n in calls) > 1:  # a layer called twice: it runs, hooked, in the suffix
        return split_before(model, nodes, nodes.index(first))
    steps = chain(first, dict(model.named_modules()), set(calls), first.target in channels_last)
    site = (steps or [first])[-1]
    at = nodes.index(site) + 1
    later = set(nodes[at:])
    cut = [n for n in nodes[:at] if n.op != "get_attr" and any(u in later for u in n.users)]
    if site not in cut:  # nothing reads the player's output: there is nothing to ablate after it
        return split_before(model, nodes, nodes.index(first))
    split = _cut(model, nodes, at, cut)
    split.outputs = {first.target: cut.index(site)}
    split.points, split.chains = insert_points(split.suffix, set(players) - {first.target}, channels_last)
    split.chains[first.target] = chain_module(model, steps, first)
    return split


def split_before(model: nn.Module, nodes: list[fx.Node], first: int) -> Split:
    """Cut just before node `first` (a player layer): the players run, and are ablated by hooks, in the suffix."""
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
            cuts.append(tuple(_channels_last(v.clone()) if isinstance(v, torch.Tensor) else v for v in split.prefix(inputs)))
            labels.append(y)
    return EvalSet(cuts, labels)


def repeatable(split: Split, eval_set: EvalSet) -> bool:
    """Whether the suffix takes its cut values repeated (several coalitions in one forward): a traced model whose
    code turned a batch size into a constant (a reshape to [N, ...]) does not, and must run whole."""
    if not split.traced or not eval_set.cuts:
        return True
    cut, n = eval_set.cuts[0], len(eval_set.labels[0])
    try:
        with torch.inference_mode():
            out = split.suffix(*[v.repeat(2, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) else v for v in cut])
    except Exception:  # noqa: BLE001 - any failure: the split cannot batch coalitions
        return False
    return isinstance(out, torch.Tensor) and out.shape[0] == 2 * n


def _channels_last(v: torch.Tensor) -> torch.Tensor:
    """Image-like values in channels-last order: oneDNN's convolutions and pooling run several times faster so."""
    return v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v


def _suffix_copy(split: Split) -> tuple[nn.Module, dict[int, Any]]:
    """The suffix in channels-last order, a copy (the worker's model keeps its own layout for the other stages),
    with the map from each original submodule's id to its copy; the suffix itself when it cannot be copied."""
    memo: dict[int, Any] = {}
    try:
        suffix = copy.deepcopy(split.suffix, memo).to(memory_format=torch.channels_last)
    except Exception:  # noqa: BLE001 - an uncopyable model is evaluated as it is
        return split.suffix, {}
    return suffix, memo


class Ablator:
    """V(removed): the metric of the suffix with the removed units set to their mean activation, for the whole
    evaluation set and for each class's images, from the same forward.

    `layers` lists (module path, units); players are numbered layer after layer. `mean_maps` are shaped like one
    image's output of each layer, in its own layout (`layouts`, default "nchw": units on axis 1; "nhwc", "tokens"
    and "windows" keep them on the last axis, and a removed unit is replaced at every position, prefix tokens too).
    Several coalitions are evaluated in one forward (the cached batch repeated, each copy with its own units removed).
    """

    def __init__(self, split: Split, layers: Sequence[tuple[str, int]], mean_maps: Sequence[np.ndarray],
                 eval_set: EvalSet, metric: str, device: str = "cpu", classes: int | None = None,
                 layouts: Sequence[str] | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
        self.split, self.eval_set, self.metric, self.device = split, eval_set, metric, device
        self.classes = classes if classes is not None else 1 + max((int(y.max()) for y in eval_set.labels if len(y)),
                                                                   default=0)
        self.offsets = np.cumsum([0] + [units for _, units in layers])
        self.means = [torch.tensor(np.asarray(m, np.float32), device=device) for m in mean_maps]
        self.layouts = list(layouts or ["nchw"] * len(layers))
        self.fills = [units_axis_1((site_value(split.chains[name], m) if name in split.chains else m)[None], layout)[0]
                      for (name, _), m, layout in zip(layers, self.means, self.layouts)]
        self.masks: list[torch.Tensor | None] = [None] * len(layers)
        self.suffix, copies = _suffix_copy(split)
        self.points = {i: copies.get(id(split.points[name]), split.points[name])
                       for i, (name, _) in enumerate(layers) if name in split.points}
        for i, point in self.points.items():
            point.fill, point.layout = self.fills[i], self.layouts[i]
        self.cached = {split.outputs[name]: i for i, (name, _) in enumerate(layers) if name in split.outputs}
        modules = layer_modules(self.suffix)
        hooked = [i for i, (name, _) in enumerate(layers) if name not in split.outputs and name not in split.points]
        self.handles = [modules[layers[i][0]].register_forward_hook(self._hook(i)) for i in hooked]
        self.class_counts = np.bincount(np.concatenate([y.numpy() for y in eval_set.labels] or [np.zeros(0, int)]),
                                        minlength=self.classes)[:self.classes]
        self.evaluations = 0

    @property
    def players(self) -> int:
        return int(self.offsets[-1])

    def _hook(self, index: int):
        def hook(_module: nn.Module, _inputs, out: torch.Tensor) -> torch.Tensor | None:
            mask = self.masks[index]
            if mask is None:
                return None
            out = out.clone()  # `out` may alias an input
            ablate(units_axis_1(out, self.layouts[index]), mask, self.fills[index])
            return out
        return hook

    def evaluate(self, removed: np.ndarray) -> np.ndarray:
        """float64 [C, 1 + classes]: for each row of `removed` (bool [C, players]), the metric on every evaluation
        image (column 0), then on each class's images (NaN for a class with none)."""
        removed = np.atleast_2d(np.asarray(removed, bool))
        totals = np.zeros((len(removed), self.classes))
        with torch.inference_mode():
            for cut, y in zip(self.eval_set.cuts, self.eval_set.labels):
                size = sum(v.element_size() * v.nelement() for v in cut if isinstance(v, torch.Tensor))
                group = max(1, FORWARD_BYTES[self.device.startswith("cuda")] // max(size, 1))  # coalitions per forward
                for s in range(0, len(removed), group):
                    totals[s:s + group] += self._forward(cut, y.to(self.device), removed[s:s + group])
        self.masks = [None] * len(self.masks)
        for point in self.points.values():
            point.removed = None
        self.evaluations += len(removed)
        whole = totals.sum(axis=1, keepdims=True) / max(int(self.class_counts.sum()), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            by_class = np.where(self.class_counts > 0, totals / self.class_counts, np.nan)
        return np.concatenate([whole, by_class], axis=1)

    def _forward(self, cut: tuple, y: torch.Tensor, removed: np.ndarray) -> np.ndarray:
        """float64 [C, classes]: the summed per-image metric of each class for C coalitions in one forward (the
        cached batch repeated C times)."""
        c, b = len(removed), len(y)
        rows = torch.as_tensor(np.repeat(removed, b, axis=0), device=self.device)  # [C*B, players]
        for i in range(len(self.masks)):
            block = rows[:, self.offsets[i]:self.offsets[i + 1]]
            self.masks[i] = block if bool(block.any()) else None
            if i in self.points:
                self.points[i].removed = self.masks[i]
        inputs = [_channels_last(v.repeat(c, *([1] * (v.dim() - 1))) if c > 1 else v.clone())
                  if isinstance(v, torch.Tensor) else v for v in cut]
        for at, i in self.cached.items():  # a copy: the cache is never written
            if self.masks[i] is not None:
                ablate(units_axis_1(inputs[at], self.layouts[i]), self.masks[i], self.fills[i])
        logits = self.suffix(*inputs).float().reshape(c, b, -1)
        per_class = torch.zeros(c, self.classes, device=self.device).index_add_(1, y, self._score(logits, y))
        return per_class.cpu().double().numpy()

    def _score(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """float32 [C, B]: per coalition and image, 1 for a correct prediction (else 0), or the log-probability."""
        if self.metric == "accuracy":
            return (logits.argmax(dim=2) == y[None]).float()
        logp = F.log_softmax(logits, dim=2)
        return logp.gather(2, y[None, :, None].expand(len(logits), -1, 1))[..., 0]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
