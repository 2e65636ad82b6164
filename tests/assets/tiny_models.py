"""Tiny models for the tests, loaded by jobs as factory = "tiny_models.py:NAME" (a file next to the job)."""

import torch
from torch import nn
from torchvision.ops.misc import Permute


class Planted(nn.Module):
    """conv1 unit 0 is a red detector: with mean 0 / std 1 input it is 0.5 on a pure red pixel and
    negative on everything else that is not strongly red. Other units are random but fixed by seed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.conv1.weight[0].zero_()
            self.conv1.weight[0, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])
            self.conv1.bias[0] = -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.relu2(self.conv2(x))
        return self.fc(torch.flatten(self.avg(x), 1))


def planted() -> nn.Module:
    return Planted()


class ColorDetectors(nn.Module):
    """With mean 0.5 / std 0.5 input (pixels in [-1, 1]), `relu` unit c is exactly 1 on pixels of pure
    color c (red, blue, green) and exactly 0 elsewhere: a 1x1 convolution computing
    x_c - (other two channels) - 2, then ReLU. Planted detectors for Network Dissection tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])[:, :, None, None])
            self.conv.bias.fill_(-2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.relu(self.conv(x))), 1)


def color_detectors() -> nn.Module:
    return ColorDetectors()


class ColorClassifier(ColorDetectors):
    """ColorDetectors with a linear head on the averaged detectors: CAM is defined on `relu`, and a test plants the
    head's class vectors (its weights file)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(super().forward(x))


def color_classifier() -> nn.Module:
    return ColorClassifier()


COLOR_MIXES = {"red": (1, -.5, -.5), "green": (-.5, 1, -.5), "blue": (-.5, -.5, 1), "yellow": (.5, .5, -1),
               "cyan": (-1, .5, .5), "magenta": (.5, -1, .5), "white": (1 / 3, 1 / 3, 1 / 3)}


class ExactColors(nn.Module):
    """For inputs in [0, 1] (mean 0 / std 1), `conv` unit i is COLOR_MIXES[i] . rgb at the centre tap of a 3x3
    kernel, and the last unit is 1 - mean(rgb) ("black"). Each unit's optimum is known in closed form: a flat
    image of full contrast on its mix (pure red, ..., white, black), where it is exactly 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, len(COLOR_MIXES) + 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            for i, mix in enumerate(COLOR_MIXES.values()):
                self.conv.weight[i, :, 1, 1] = torch.tensor(mix)
            self.conv.weight[-1, :, 1, 1] = -1 / 3
            self.conv.bias[-1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @staticmethod
    def optima() -> torch.Tensor:
        """Each unit's optimal flat color [units, 3] in [0, 1]."""
        return (torch.tensor(list(COLOR_MIXES.values()) + [(-1 / 3,) * 3]) > 0).float()


class ShapleyPlanted(nn.Module):
    """Neuron Shapley with closed-form values. With mean 0.5 / std 0.5 input, `relu` units 0, 1 and 3
    are exactly 1 on pure red, green and blue pixels (0 elsewhere); unit 2 never fires. From the
    global average, class 0 has logit 0, class 1 2*(red + blue) - 1.5, class 2 2*green - 1.5: a red
    or blue image is class 1 only while its detector is kept, a green one class 2 only while the
    green detector is, a gray one always class 0 (while mean ablation adds less than 0.75)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            w = [[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]
            self.conv.weight.copy_(torch.tensor(w)[:, :, None, None])
            self.conv.bias.copy_(torch.tensor([-2.0, -2.0, -10.0, -2.0]))
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 2.0], [0.0, 2.0, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, -1.5, -1.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def shapley_planted() -> nn.Module:
    return ShapleyPlanted()


class PatternDetectors(nn.Module):
    """Units with known preferred patterns (input: mean 0.5 / std 0.5): `relu` unit 0 likes red,
    1 blue, 2 vertical stripes of period 4 pixels (varying along x), 3 horizontal ones; `conv` is
    the same before the ReLU (for negative visualizations)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 7, padding=3, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            w = torch.zeros(4, 3, 7, 7)
            w[0, :, 3, 3] = torch.tensor([1.0, -0.5, -0.5])
            w[1, :, 3, 3] = torch.tensor([-0.5, -0.5, 1.0])
            wave = torch.cos(2 * torch.pi * torch.arange(7.0) / 4) / 20
            w[2] = wave[None, None, :].expand(3, 7, 7)
            w[3] = wave[None, :, None].expand(3, 7, 7)
            self.conv.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def pattern_detectors() -> nn.Module:
    return PatternDetectors()


class Poison(nn.Module):
    """Unit 1 becomes NaN and unit 2 +inf wherever unit 1 was positive."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        hot = y[:, 1:2] > 0
        return torch.cat([y[:, :1], torch.where(hot, torch.nan, y[:, 1:2]), torch.where(hot, torch.inf, y[:, 2:3])], dim=1)


class NonFinite(nn.Module):
    """With mean 0 / std 1 input, `poison` unit 1 is NaN and unit 2 +inf at pure red pixels (conv unit 1 is
    the planted red detector: positive only there), elsewhere ordinary convolution outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.poison = Poison()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight[1].zero_()
            self.conv.weight[1, :, 1, 1] = torch.tensor([1.0, -1.0, -1.0])
            self.conv.bias[1] = -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.poison(self.conv(x)))), 1))


def non_finite() -> nn.Module:
    return NonFinite()


class Twins(nn.Module):
    """Planted similar units, for the similarity stage. conv1 units 1 and 4 have the same weights (activation
    correlation 1, weight cosine 1); conv1 unit 5 has zero weights (a constant: no neighbours); relu1 (its own
    module, not in place) passes conv1 on; conv2 unit 0 is 2 x relu1 unit 2 + 0.3 (correlation 1 across the
    layers); conv2 unit 4 is 3 x conv2 unit 3 (correlation 1, cosine 1). Other units are random, fixed by seed."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 1)
        self.avg = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.conv1.weight[4] = self.conv1.weight[1]
            self.conv1.bias[4] = self.conv1.bias[1]
            self.conv1.weight[5].zero_()
            self.conv1.bias[5] = -1.0
            self.conv2.weight[0].zero_()
            self.conv2.weight[0, 2] = 2.0
            self.conv2.bias[0] = 0.3
            self.conv2.weight[4] = 3 * self.conv2.weight[3]
            self.conv2.bias[3] = 0.0
            self.conv2.bias[4] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avg(self.conv2(self.relu1(self.conv1(x)))), 1)


def twins() -> nn.Module:
    return Twins()


class Brightness(nn.Module):
    """For the activation spectrum: `conv` unit 0 is each pixel's brightness (the mean of its three channels, so with
    mean 0 / std 1 input value / 255 on a gray pixel), unit 1 its negative; a 1x1 convolution, so each position's
    receptive field is its own pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])[:, :, None, None] / 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.conv(x)), 1)


def brightness() -> nn.Module:
    return Brightness()


class ChannelsLast(nn.Module):
    """A ConvNeXt-like block: conv (NCHW), permute, Linear on [N, H, W, C], permute back, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(Permute([0, 2, 3, 1]), nn.Linear(4, 6), nn.GELU(), Permute([0, 3, 1, 2]))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.conv(x)).mean(dim=(2, 3)))


def channels_last() -> nn.Module:
    torch.manual_seed(0)
    return ChannelsLast()


# --- units off axis 1: planted colour detectors in a token model and a channels-last model ---------------------------

DETECTORS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])  # red, blue, green (as ColorDetectors)


def _patch_detectors() -> nn.Conv2d:
    """2x2 patches, stride 2, of 4 channels: channels 0-2 ColorDetectors' red, blue and green on a patch of one colour
    (each tap a quarter of the 1x1 detector; input mean 0.5 / std 0.5), channel 3 always 0."""
    conv = nn.Conv2d(3, 4, 2, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:3] = (DETECTORS / 4)[:, :, None, None].expand(3, 3, 2, 2)
        conv.bias.copy_(torch.tensor([-2.0, -2.0, -2.0, 0.0]))
    return conv


class PlantedTokens(nn.Module):
    """A ViT-like model whose token units are planted: a patch embedding (16x16 patches of a 32 px image), a class
    token first, then `mlp` (the identity, a Linear over [N, 257, 4]) and `relu` ([N, 257, 4]). `relu` units 0, 1, 2
    are exactly 1 on patches of pure red, blue, green and 0 elsewhere; unit 3 is 1 at the class token only. The
    head reads the class token and the mean patch token."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = _patch_detectors()
        self.cls = nn.Parameter(torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]))
        self.mlp = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.mlp.weight.copy_(torch.eye(4))
            self.mlp.bias.zero_()
            self.head.weight.copy_(torch.tensor([[4.0, 0.0, -4.0, 1.0], [-4.0, 0.0, 4.0, -1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        out = self.relu(self.mlp(tokens))
        return self.head(out[:, 0] + out[:, 1:].mean(dim=1))


def planted_tokens() -> nn.Module:
    return PlantedTokens()


class PlantedChannelsLast(nn.Module):
    """A ConvNeXt-like model whose channels-last units are planted: the patch detectors, a permute to [N, H, W, C],
    `mlp` (the identity Linear) and `relu`, a permute back, a pooled head. `relu` units 0, 1, 2 are exactly 1 on
    patches of pure red, blue, green and 0 elsewhere; unit 3 is always 0."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = _patch_detectors()
        self.to_last = Permute([0, 2, 3, 1])
        self.mlp = nn.Linear(4, 4)
        self.relu = nn.ReLU()
        self.to_first = Permute([0, 3, 1, 2])
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.mlp.weight.copy_(torch.eye(4))
            self.mlp.bias.zero_()
            self.head.weight.copy_(torch.tensor([[4.0, 0.0, -4.0, 0.0], [-4.0, 0.0, 4.0, 0.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.to_first(self.relu(self.mlp(self.to_last(self.patch(x)))))
        return self.head(out.mean(dim=(2, 3)))


def planted_channels_last() -> nn.Module:
    return PlantedChannelsLast()


# --- today's architectures, tiny and real: torchvision's own classes --------------------------------------------------

def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer: 32 px, 8 px patches (a 4x4 grid and a class token), one block."""
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32,
                             num_classes=2)


def tiny_swin() -> nn.Module:
    """torchvision's SwinTransformer: 4 px patches, two stages of one block, 2x2 windows, channels last throughout."""
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=[2, 2],
                           num_classes=2)


def tiny_convnext() -> nn.Module:
    """torchvision's ConvNeXt: two stages of one block (depthwise conv channels first, its MLP channels last)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=2)


class Windowed(nn.Module):
    """A MaxViT-like partition: a conv (NCHW), its map cut into 2x2 windows [N, windows, 4, C], a Linear over them
    (whose [N, G, P, C] output is no grid of the image), and a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.mix = nn.Linear(4, 6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = self.conv(x).shape
        windows = self.conv(x).reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, 4, c)
        return self.fc(self.mix(windows).mean(dim=(1, 2)))


def windowed() -> nn.Module:
    torch.manual_seed(0)
    return Windowed()


PALETTE = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "gray": (1 / 255,) * 3, "blue": (-1.0, -1.0, 1.0)}


class Superposed(nn.Module):
    """A layer in superposition (Elhage et al. 2022): `colors` one-concept features stored in fewer channels, along
    known directions. `detect` is exactly `gain` on a 2x2 patch of one mini-Broden colour (input mean 0.5 / std 0.5)
    and 0 elsewhere, one channel per colour, the gain fixed by position: 0 at 3 positions in 7 (no feature there),
    else scattered over 0.5 to 1.5 (a feature's strength varies continuously: only the planted directions through
    the origin then reconstruct every position with one feature);
    `mix` (a 1x1 convolution) writes colour i along superposed_directions()[i]: each of `mix`'s channels fires on
    several colours (polysemantic by construction). The head reads the mean of `mix`."""

    def __init__(self, colors: int = 3, channels: int = 2) -> None:
        super().__init__()
        names = list(PALETTE)[:colors]
        self.register_buffer("palette", torch.tensor([PALETTE[n] for n in names]))
        y, x = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
        spread = torch.frac(torch.sin(y * 12.9898 + x * 78.233).abs() * 43758.5453)  # a fixed scatter in [0, 1)
        self.register_buffer("gain", torch.where((3 * y + 5 * x) % 7 < 3, 0.0, 0.5 + spread))
        self.detect = nn.Identity()
        self.mix = nn.Conv2d(colors, channels, 1, bias=False)
        self.head = nn.Linear(channels, 2)
        with torch.no_grad():
            self.mix.weight.copy_(superposed_directions(colors, channels).T[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[1.0] * channels, [-1.0] * channels]) / channels)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = nn.functional.avg_pool2d(x, 2)  # [N, 3, H/2, W/2]
        far = (patch[:, None] - self.palette[None, :, :, None, None]).abs().amax(dim=2)  # [N, colors, h, w]
        h, w = far.shape[2:]
        out = self.mix(self.detect(torch.relu(1 - 2 * far) * self.gain[:h, :w]))
        return self.head(out.mean(dim=(2, 3)))


def superposed_directions(colors: int = 3, channels: int = 2) -> torch.Tensor:
    """[colors, channels] unit directions, each with positive components, so every channel reads several colours:
    3 in 2 channels at 0, 45 and 90 degrees; 4 in 3 channels: the three axes and their diagonal."""
    if (colors, channels) == (3, 2):
        d = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    elif (colors, channels) == (4, 3):
        d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    else:
        raise ValueError(f"no planted directions for {colors} colours in {channels} channels")
    return d / d.norm(dim=1, keepdim=True)


def superposed() -> nn.Module:
    return Superposed()


class Grouped(nn.Module):
    """`mix` has three planted groups of 8 units: unit 8g + i reads input channel g (weight 1 + i / 8) plus a small
    fixed mix of the others (at most 0.15), so units of a group respond alike to any image and units of two groups
    do not (the unit_map stage must place each group together). Unit 24 is constant (its weights are 0): it has no vector."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.mix = nn.Conv2d(3, 25, 1)
        self.head = nn.Linear(25, 2)
        with torch.no_grad():
            weight = 0.15 * (2 * torch.rand(25, 3, generator=generator) - 1)
            for g in range(3):
                weight[8 * g: 8 * g + 8, g] = 1 + torch.arange(8) / 8
            weight[24] = 0
            self.mix.weight.copy_(weight[:, :, None, None])
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x).mean(dim=(2, 3)))


def grouped() -> nn.Module:
    return Grouped()
