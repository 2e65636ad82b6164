"""The concept world's vocabulary: its colors, textures, materials, objects with their parts, and scenes,
with the probabilities the drawing (world.py) samples them by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE = 8  # max per-channel deviation of a pixel from its color's nominal RGB
TEXTURE_MIN = 0.3  # area fraction for a pattern to count as an image's texture

COLORS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25), "blue": (40, 80, 210), "brown": (125, 80, 40), "green": (50, 160, 60),
    "grey": (130, 130, 130), "orange": (245, 145, 30), "pink": (245, 160, 200), "purple": (135, 60, 170),
    "red": (210, 40, 40), "white": (235, 235, 235), "yellow": (240, 215, 50),
}
COLOR_NAMES = tuple(COLORS)
PALETTE = np.array(list(COLORS.values()), dtype=np.int16)
_C = {name: i for i, name in enumerate(COLOR_NAMES)}

TEXTURE_NAMES = ("plain", "striped", "grid", "speckled", "wavy", "checkered", "dotted")
MATERIAL_PATTERN = {"wood": "striped", "brick": "grid", "grass": "speckled", "water": "wavy",
                    "tile": "checkered", "sand": "dotted", "asphalt": "speckled", "plaster": "plain"}
MATERIAL_NAMES = tuple(MATERIAL_PATTERN)

# Shapes live in the object's unit box (u across, v down, both 0..1):
# ("rect", u0, v0, u1, v1) | ("ellipse", cu, cv, ru, rv) | ("poly", (u, v), ...) convex, clockwise or not.
Shape = tuple


@dataclass(frozen=True)
class PartSpec:
    """One part of an object: its shapes, candidate colors, optional parent (then it is a level-2 part)."""

    name: str | None  # None: the object's pixels without a part label
    shapes: tuple[Shape, ...]
    colors: tuple[str, ...]
    parent: str | None = None
    pattern: tuple[str, float] | None = None  # (texture name, probability) of a two-color fill
    probability: float = 1.0


@dataclass(frozen=True)
class ObjectSpec:
    """An object: width/height ratio, size relative to the others, parts in drawing order."""

    aspect: float
    scale: float
    parts: tuple[PartSpec, ...]
    floating: bool = False  # placed anywhere instead of standing on the ground


P = PartSpec
OBJECTS: dict[str, ObjectSpec] = {
    "house": ObjectSpec(1.0, 1.25, (
        P("body", (("rect", 0.1, 0.45, 0.9, 1.0),), ("white", "yellow", "red", "pink")),
        P("roof", (("poly", (0.0, 0.47), (0.5, 0.0), (1.0, 0.47)),), ("red", "brown", "black", "grey")),
        P("door", (("rect", 0.42, 0.7, 0.6, 1.0),), ("brown", "black"), parent="body"),
        P("window", (("rect", 0.17, 0.58, 0.35, 0.76), ("rect", 0.67, 0.58, 0.85, 0.76)), ("blue", "white"), parent="body"),
    )),
    "tree": ObjectSpec(0.7, 1.3, (
        P("trunk", (("rect", 0.38, 0.55, 0.62, 1.0),), ("brown",)),
        P("crown", (("ellipse", 0.5, 0.33, 0.5, 0.33),), ("green", "orange")),
        P("fruit", (("ellipse", 0.3, 0.3, 0.09, 0.07), ("ellipse", 0.66, 0.24, 0.09, 0.07),
                    ("ellipse", 0.55, 0.48, 0.09, 0.07)), ("red", "yellow"), parent="crown", probability=0.4),
    )),
    "car": ObjectSpec(1.8, 0.8, (
        P("body", (("rect", 0.0, 0.35, 1.0, 0.82), ("rect", 0.2, 0.05, 0.75, 0.4)), ("red", "blue", "yellow", "white")),
        P("window", (("rect", 0.27, 0.13, 0.68, 0.36),), ("white", "grey", "blue"), parent="body"),
        P("wheel", (("ellipse", 0.22, 0.8, 0.13, 0.2), ("ellipse", 0.78, 0.8, 0.13, 0.2)), ("black",)),
        P("hub", (("ellipse", 0.22, 0.8, 0.05, 0.08), ("ellipse", 0.78, 0.8, 0.05, 0.08)), ("grey", "white"), parent="wheel"),
    )),
    "lamp": ObjectSpec(0.45, 1.1, (
        P("pole", (("rect", 0.4, 0.3, 0.6, 0.92),), ("black", "grey")),
        P("shade", (("poly", (0.1, 0.35), (0.3, 0.0), (0.7, 0.0), (0.9, 0.35)),), ("yellow", "white", "orange")),
        P("base", (("rect", 0.15, 0.9, 0.85, 1.0),), ("black", "grey", "brown")),
    )),
    "boat": ObjectSpec(1.4, 1.0, (
        P("hull", (("poly", (0.0, 0.65), (1.0, 0.65), (0.8, 1.0), (0.2, 1.0)),), ("brown", "white", "red")),
        P("mast", (("rect", 0.46, 0.0, 0.54, 0.66),), ("brown", "black")),
        P("sail", (("poly", (0.56, 0.05), (0.56, 0.6), (0.92, 0.6)),), ("white", "yellow", "red"), pattern=("striped", 0.3)),
    )),
    "table": ObjectSpec(1.5, 0.8, (
        P("top", (("rect", 0.0, 0.3, 1.0, 0.47),), ("brown", "white", "black")),
        P("leg", (("rect", 0.08, 0.47, 0.2, 1.0), ("rect", 0.8, 0.47, 0.92, 1.0)), ("brown", "black", "grey")),
    )),
    "flower": ObjectSpec(0.6, 0.9, (
        P("stem", (("rect", 0.43, 0.45, 0.57, 1.0),), ("green",)),
        P("petal", (("ellipse", 0.5, 0.27, 0.5, 0.27),), ("red", "pink", "purple", "yellow", "white")),
        P("center", (("ellipse", 0.5, 0.27, 0.2, 0.12),), ("yellow", "orange", "black"), parent="petal"),
    )),
    "fish": ObjectSpec(1.6, 0.6, (
        P("body", (("ellipse", 0.42, 0.5, 0.4, 0.38),), ("orange", "blue", "purple", "yellow"), pattern=("striped", 0.3)),
        P("tail", (("poly", (0.75, 0.5), (1.0, 0.1), (1.0, 0.9)),), ("orange", "blue", "purple", "yellow")),
        P("eye", (("ellipse", 0.22, 0.42, 0.07, 0.11),), ("black", "white"), parent="body"),
    ), floating=True),
    "ball": ObjectSpec(1.0, 0.55, (
        P(None, (("ellipse", 0.5, 0.5, 0.5, 0.5),), ("red", "blue", "yellow", "white", "pink"), pattern=("striped", 0.5)),
    ), floating=True),
    "cup": ObjectSpec(1.0, 0.6, (
        P("handle", (("ellipse", 0.75, 0.5, 0.25, 0.25),), ("white", "red", "blue", "yellow", "black")),
        P("body", (("poly", (0.05, 0.12), (0.75, 0.12), (0.66, 1.0), (0.14, 1.0)),), ("white", "red", "blue", "yellow"),
          pattern=("dotted", 0.3)),
    )),
}
OBJECT_NAMES = tuple(OBJECTS)
PART_NAMES = tuple(dict.fromkeys(p.name for o in OBJECTS.values() for p in o.parts if p.name))


@dataclass(frozen=True)
class SceneSpec:
    """What a scene class looks like: weights of top / bottom materials and of objects, object count range."""

    top: dict[str, float]
    bottom: dict[str, float]
    objects: dict[str, float]
    count: tuple[int, int] = (1, 3)


SCENES: dict[str, SceneSpec] = {  # alphabetical: the index is torchvision ImageFolder's class index
    "beach": SceneSpec({"water": 0.7, "plaster": 0.3}, {"sand": 0.9, "water": 0.1},
                       {"boat": 2, "ball": 2, "fish": 1, "tree": 0.5}),
    "forest": SceneSpec({"grass": 0.6, "wood": 0.4}, {"grass": 0.7, "sand": 0.3},
                        {"tree": 5, "flower": 1}, (2, 4)),
    "garden": SceneSpec({"brick": 0.4, "wood": 0.3, "plaster": 0.3}, {"grass": 0.9, "sand": 0.1},
                        {"flower": 4, "tree": 2, "house": 1, "ball": 1}),
    "harbor": SceneSpec({"brick": 0.4, "plaster": 0.3, "wood": 0.3}, {"water": 0.9, "wood": 0.1},
                        {"boat": 4, "fish": 2, "house": 1, "lamp": 1}),
    "kitchen": SceneSpec({"plaster": 0.4, "tile": 0.3, "wood": 0.3}, {"tile": 0.5, "wood": 0.5},
                         {"table": 3, "cup": 3, "lamp": 1, "flower": 0.5}),
    "street": SceneSpec({"brick": 0.5, "plaster": 0.5}, {"asphalt": 0.85, "tile": 0.15},
                        {"car": 4, "lamp": 2, "house": 2, "tree": 0.5}),
}
SCENE_NAMES = tuple(SCENES)
DISTRACTOR_GROUND = 0.15  # probability that the ground is a uniformly random material
DISTRACTOR_OBJECT = 0.3  # probability of one extra object drawn from all objects
SPLIT_TOP = 0.3  # probability that the top region is split in two materials

CATEGORY_LABELS: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES, "object": OBJECT_NAMES, "part": PART_NAMES,
    "material": MATERIAL_NAMES, "scene": SCENE_NAMES, "texture": TEXTURE_NAMES,
}
MAP_NAMES = ("color", "object", "part_1", "part_2", "material")

# Synonyms, as Broden's label.csv `syns` lists WordNet's (searched by `query --label` and the site's search box).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "grey": ("gray",), "red": ("crimson", "scarlet"), "purple": ("violet",), "house": ("home", "dwelling"),
    "car": ("automobile", "auto"), "boat": ("ship", "vessel"), "lamp": ("lantern",), "cup": ("mug",),
    "crown": ("treetop", "canopy"), "hull": ("hulk",), "wood": ("timber", "lumber"),
    "asphalt": ("tarmac", "blacktop"), "water": ("h2o",), "harbor": ("harbour", "port"), "street": ("road",),
    "striped": ("banded", "stripy"), "checkered": ("chequered", "checked"), "dotted": ("polka dot",),
}
