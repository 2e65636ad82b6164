"""Where a player layer's units are ablated: after the per-channel operations that follow it.

Mean ablation sets a unit's map to its mean map M. An operation that acts on each channel of each
image alone (ReLU, pooling, batch norm in eval mode, dropout in eval mode) turns M into f(M), the same
for every image, so the ablation can be moved past it: the unit's channel of f's output is set to
f(M). The suffix then starts after the first player's ReLU and pooling (a quarter of the values to
copy for every coalition in the demo model, and two fewer passes over them), with the same metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.inputs.layouts import units_axis_1

PER_CHANNEL_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
EVAL_ONLY_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                     nn.Dropout3d, nn.AlphaDropout)  # per channel only when not training
PER_CHANNEL_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool2d,
}
PER_CHANNEL_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
# on a channels-last value (units on the last axis) pooling and batch norm mix or misread the units: only these
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
              nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity)


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
    return found


def _per_channel(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], pointwise: bool = False) -> bool:
    """Whether `node` applies a per-channel, per-image operation to `source` (its only graph input); `pointwise`:
    an element-wise one (what keeps the units of a channels-last value apart)."""
    if _node_args(node) != [source] or not node.args or node.args[0] is not source:
        return False
    if pointwise:
        return node.op == "call_module" and isinstance(modules[node.target], _POINTWISE)
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, PER_CHANNEL_MODULES) or (isinstance(module, EVAL_ONLY_MODULES) and not module.training)
    if node.op == "call_function":
        return node.target in PER_CHANNEL_FUNCTIONS and not node.kwargs.get("return_indices", False)
    return node.op == "call_method" and node.target in PER_CHANNEL_METHODS and len(node.args) == 1


def chain(start: fx.Node, modules: dict[str, nn.Module], stop: set[fx.Node], pointwise: bool = False) -> list[fx.Node]:
    """The per-channel operations that alone read `start`'s value, one after the other (none of them in `stop`);
    `pointwise`: element-wise modules only (for a player whose units are on the last axis)."""
    nodes, at = [], start
    while len(at.users) == 1:
        user = next(iter(at.users))
        if user in stop or not _per_channel(user, at, modules, pointwise):
            break
        nodes.append(user)
        at = user
    return nodes


def chain_module(root: nn.Module, nodes: list[fx.Node], start: fx.Node) -> nn.Module:
    """A module mapping `start`'s value to the value of the chain's last node (the identity for no chain)."""
    graph = fx.Graph()
    env = {start: graph.placeholder("x")}
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[nodes[-1]] if nodes else env[start])
    return fx.GraphModule(root, graph)


class AblationPoint(nn.Module):
    """Inserted into the suffix after a player's site: the removed (coalition row, unit) maps set to the fill.

    `removed` (bool [rows, units]) and `fill` ([units, ...], the site value of the mean map) are set by the
    Ablator; `removed` None means the forward is left alone."""

    def __init__(self) -> None:
        super().__init__()
        self.removed: torch.Tensor | None = None
        self.fill: torch.Tensor | None = None
        self.layout = "nchw"  # where the player keeps its units (set by the Ablator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.removed is None:
            return x
        out = x.clone()  # `x` may be read elsewhere (a residual branch)
        ablate(units_axis_1(out, self.layout), self.removed, self.fill)
        return out


def ablate(out: torch.Tensor, removed: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """`out` with the removed (row, unit) maps set to their fill, in place: only those maps are written (a broadcast
    `where` rewrites all of them, several times slower)."""
    rows, units = removed.nonzero(as_tuple=True)
    out[rows, units] = fill[units].to(out.dtype)
    return out


def insert_points(suffix: fx.GraphModule, players: set[str],
                  channels_last: frozenset[str] = frozenset()) -> tuple[dict[str, AblationPoint], dict[str, nn.Module]]:
    """An AblationPoint after the site of every call of a player layer in `suffix` (rewired in place), and per
    player the chain module from its output to its site (of its first call); `channels_last`: the players whose
    units are on the last axis."""
    modules = dict(suffix.named_modules())
    calls = [n for n in suffix.graph.nodes if n.op == "call_module" and n.target in players]
    points: dict[str, AblationPoint] = {}
    chains: dict[str, nn.Module] = {}
    for n in calls:
        nodes = chain(n, modules, set(calls), n.target in channels_last)
        site = (nodes or [n])[-1]
        name = f"ablate_{n.target.replace('.', '_')}"
        if n.target not in points:
            points[n.target] = AblationPoint()
            chains[n.target] = chain_module(suffix, nodes, n)
            suffix.add_submodule(name, points[n.target])
        with suffix.graph.inserting_after(site):
            point = suffix.graph.call_module(name, (site,))
        site.replace_all_uses_with(point, delete_user_cb=lambda user: user is not point)
    suffix.graph.lint()
    suffix.recompile()
    return points, chains


def site_value(module: nn.Module, mean_map: torch.Tensor) -> torch.Tensor:
    """[units, ...]: the mean map carried through a chain module (as one image), the fill at the site."""
    with torch.inference_mode():
        return module(mean_map[None])[0].clone()

