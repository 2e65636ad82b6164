"""The demo model: a small CNN that classifies the concept world's scenes (64x64 RGB).

Layers are top-level attributes with fixed names, so job files can select them by
module path ("conv1" .. "conv4", "fc"); every ReLU is its own module (in place, as in
torchvision models, which exercises the hooks' copy-before-ReLU rule).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.concepts.vocabulary import SCENE_NAMES

ARCHITECTURE = "ConceptCNN-v1"  # change when the layers change: it is part of the training cache key


class ConceptCNN(nn.Module):
    """conv1..conv3: Conv3x3 -> ReLU -> MaxPool2; conv4: Conv3x3 -> ReLU -> global average; fc: Linear.

    Channels for width w: w/2, w, w, 2w (16, 32, 32, 64 at the default w = 32).
    For a 64x64 input the maps are 64, 32, 16 and 8 pixels wide at conv1..conv4.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        half = max(1, width // 2)
        self.conv1 = nn.Conv2d(3, half, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(half, width, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu4 = nn.ReLU(inplace=True)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        x = self.pool4(self.relu4(self.conv4(x)))
        return self.fc(torch.flatten(x, 1))


def concept_cnn(num_classes: int = len(SCENE_NAMES)) -> nn.Module:
    """Factory for job files: factory = "pipeline.demo.model:concept_cnn" (one output per scene class)."""
    return ConceptCNN(num_classes)
