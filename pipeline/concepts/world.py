"""Drawing the concept world: procedural RGB scenes with exact per-pixel ground truth.

An image is drawn at full resolution as small integer maps, one entry per pixel:
the named color it was painted with, the object, the object's part (level 1, e.g. a
house's `body`) and the part's part (level 2, e.g. the `window` on that body), the
background material, and the texture pattern. The RGB image is each pixel's nominal
palette color plus uniform noise of at most NOISE per channel, so every pixel (the
background textures included) carries the `color` label of the color it was drawn
with, and the label maps agree with the pixels exactly.

The scene comes first and the content follows from it: image `index` shows scene
SCENE_NAMES[index % len(SCENE_NAMES)] (round robin, so any world of at least six
images holds every class and classes stay balanced); the scene's table then weights
the top (wall / far) and bottom (ground) materials and the objects placed on the
ground. Scenes share materials and objects (grass: forest and garden; water: beach
and harbor; lamps: street, kitchen, harbor), and with some probability the ground is
a random material and a random distractor object joins, so no single color or
material decides the scene.

Textures are image-level: every pattern covering at least TEXTURE_MIN of the image,
dominant first (materials have patterns, objects are plain unless striped/dotted).

Randomness: one generator per image, `default_rng([seed, index])`, so image i is the
same whatever number of images is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class Drawing:
    """One drawn image: RGB pixels and its ground truth.

    maps: "color", "object", "part_1", "part_2", "material" -> int16 [size, size], the
    1-based index into that category's CATEGORY_LABELS names, 0 = none.
    """

    rgb: np.ndarray
    maps: dict[str, np.ndarray]
    scene: str
    textures: tuple[str, ...]


@dataclass
class _Canvas:
    """Full-resolution maps being painted, plus pixel coordinate grids."""

    size: int
    yy: np.ndarray = field(init=False)
    xx: np.ndarray = field(init=False)
    maps: dict[str, np.ndarray] = field(init=False)
    pattern: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.yy, self.xx = np.mgrid[0:self.size, 0:self.size]
        self.maps = {name: np.zeros((self.size, self.size), np.int16) for name in MAP_NAMES}
        self.pattern = np.zeros((self.size, self.size), np.int16)

    @property
    def s(self) -> float:
        """Pattern scale: drawings are designed at 64 px."""
        return self.size / 64.0


def _pick(rng: np.random.Generator, options: tuple | list):
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def _weighted(rng: np.random.Generator, table: dict[str, float]) -> str:
    """A key of `table` with probability proportional to its value."""
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _two_tone(mask: np.ndarray, fg: str, bg: str) -> np.ndarray:
    """Color-index map: `fg` where mask, else `bg`."""
    return np.where(mask, _C[fg], _C[bg]).astype(np.int16)


def _material(name: str, cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """A full-canvas color-index map of a material's textured fill (the caller keeps its region)."""
    s, yy, xx = cv.s, cv.yy, cv.xx
    if name == "wood":  # wobbly grain stripes
        base, grain = _pick(rng, [("brown", "orange"), ("brown", "black"), ("orange", "brown")])
        period, amp = rng.uniform(3.5, 5.5) * s, rng.uniform(0.5, 2.0) * s
        freq, phase = rng.uniform(0.1, 0.3) / s, rng.uniform(0, 2 * np.pi)
        a, b = (xx, yy) if rng.random() < 0.5 else (yy, xx)
        return _two_tone(np.mod(a + amp * np.sin(b * freq + phase), period) < period / 3, grain, base)
    if name == "brick":  # offset rows of bricks with mortar lines
        brick, mortar = _pick(rng, [("red", "white"), ("red", "grey"), ("orange", "white"), ("brown", "grey")])
        bh = max(3, int(round(rng.uniform(4, 6) * s)))
        bw, oy, ox = 2 * bh, int(rng.integers(bh)), int(rng.integers(2 * bh))
        row = (yy + oy) // bh
        joint = ((yy + oy) % bh == 0) | ((xx + ox + (row % 2) * bh) % bw == 0)
        return _two_tone(joint, mortar, brick)
    if name in ("grass", "asphalt"):  # random specks
        base, specks = ("green", ("yellow", "black", "brown")) if name == "grass" else ("grey", ("black", "white"))
        return _two_tone(rng.random(yy.shape) < rng.uniform(0.15, 0.3), _pick(rng, specks), base)
    if name == "water":  # thin wavy lines
        period, amp = rng.uniform(5, 8) * s, rng.uniform(1.0, 2.5) * s
        freq, phase = rng.uniform(0.15, 0.35) / s, rng.uniform(0, 2 * np.pi)
        return _two_tone(np.mod(yy + amp * np.sin(xx * freq + phase), period) < max(1.0, 1.3 * s), "white", "blue")
    if name == "tile":  # checkerboard
        a, b = _pick(rng, [("white", "grey"), ("white", "black"), ("white", "blue"), ("yellow", "white")])
        c, oy, ox = max(2, int(round(rng.uniform(5, 8) * s))), int(rng.integers(8)), int(rng.integers(8))
        return _two_tone(((yy + oy) // c + (xx + ox) // c) % 2 == 1, a, b)
    if name == "sand":  # round dots on a staggered lattice
        return _two_tone(_dots(cv, rng, rng.uniform(5, 7) * s, rng.uniform(1.0, 1.6) * s), _pick(rng, ("orange", "brown")), "yellow")
    if name == "plaster":  # plain
        return np.full(yy.shape, _C[_pick(rng, ("white", "pink", "yellow"))], np.int16)
    raise ValueError(f"unknown material {name!r}")


def _dots(cv: _Canvas, rng: np.random.Generator, period: float, radius: float) -> np.ndarray:
    """Boolean map of round dots on a staggered lattice with a random offset."""
    oy, ox = rng.uniform(0, period, size=2)
    row = np.floor((cv.yy + oy) / period)
    dy = np.mod(cv.yy + oy, period) - period / 2
    dx = np.mod(cv.xx + ox + (row % 2) * period / 2, period) - period / 2
    return dy * dy + dx * dx <= radius * radius


def _shape_mask(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels whose centers fall inside `shape` (unit-box coordinates)."""
    kind = shape[0]
    if kind == "rect":
        _, u0, v0, u1, v1 = shape
        return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
    if kind == "ellipse":
        _, cu, cv, ru, rv = shape
        return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0
    if kind == "poly":  # convex: inside when on the same side of every edge
        pts = shape[1:]
        sides = []
        for (u0, v0), (u1, v1) in zip(pts, pts[1:] + pts[:1]):
            sides.append((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0))
        sides = np.stack(sides)
        return np.all(sides >= 0, axis=0) | np.all(sides <= 0, axis=0)
    raise ValueError(f"unknown shape {kind!r}")


def _paint_object(cv: _Canvas, name: str, box: tuple[float, float, float, float], rng: np.random.Generator) -> None:
    """Paint one object and its parts over whatever is on the canvas (painter's order)."""
    spec, (y0, x0, h, w) = OBJECTS[name], box
    v, u = (cv.yy + 0.5 - y0) / h, (cv.xx + 0.5 - x0) / w
    obj_id, used = OBJECT_NAMES.index(name) + 1, []
    drawn: dict[str, int] = {}
    for part in spec.parts:
        if part.probability < 1.0 and rng.random() >= part.probability:
            continue
        if part.parent is not None and part.parent not in drawn:
            continue
        mask = np.zeros(u.shape, bool)
        for shape in part.shapes:
            mask |= _shape_mask(shape, u, v)
        if part.parent is not None:  # a part of a part lies on its visible parent
            mask &= (cv.maps["object"] == obj_id) & (cv.maps["part_1"] == drawn[part.parent])
        free = [c for c in part.colors if c not in used] or list(part.colors)
        color = _pick(rng, free)
        used.append(color)
        colors, texture = np.full(u.shape, _C[color], np.int16), "plain"
        if part.pattern is not None and rng.random() < part.pattern[1]:
            texture = part.pattern[0]
            other = _pick(rng, [c for c in ("white", "black") if c != color])
            on = (cv.yy // max(2, int(round(2 * cv.s)))) % 2 == 1 if texture == "striped" else _dots(cv, rng, 4 * cv.s, 1.0 * cv.s)
            colors = np.where(on, _C[other], colors).astype(np.int16)
        part_id = PART_NAMES.index(part.name) + 1 if part.name else 0
        cv.maps["color"][mask] = colors[mask]
        cv.maps["object"][mask] = obj_id
        cv.maps["material"][mask] = 0
        cv.pattern[mask] = TEXTURE_NAMES.index(texture)
        if part.parent is None:
            cv.maps["part_1"][mask] = part_id
            cv.maps["part_2"][mask] = 0
            if part.name:
                drawn[part.name] = part_id
        else:
            cv.maps["part_2"][mask] = part_id


def _background(cv: _Canvas, scene: SceneSpec, rng: np.random.Generator) -> float:
    """Paint the top and ground materials; returns the mean ground line (y)."""
    size, s = cv.size, cv.s
    ground = rng.uniform(0.3, 0.55) * size
    wobble = rng.uniform(0, 2.0) * s * np.sin(cv.xx * rng.uniform(0.05, 0.2) / s + rng.uniform(0, 2 * np.pi))
    bottom_region = cv.yy + 0.5 >= ground + wobble
    top = _weighted(rng, scene.top)
    bottom = _pick(rng, MATERIAL_NAMES) if rng.random() < DISTRACTOR_GROUND else _weighted(rng, scene.bottom)
    regions = [(top, ~bottom_region), (bottom, bottom_region)]
    if rng.random() < SPLIT_TOP:
        right = cv.xx + 0.5 >= rng.uniform(0.3, 0.7) * size
        regions = [(top, ~bottom_region & ~right), (_weighted(rng, scene.top), ~bottom_region & right), regions[1]]
    for material, region in regions:
        fill = _material(material, cv, rng)
        cv.maps["color"][region] = fill[region]
        cv.maps["material"][region] = MATERIAL_NAMES.index(material) + 1
        cv.pattern[region] = TEXTURE_NAMES.index(MATERIAL_PATTERN[material])
    return ground


def _place(name: str, size: int, ground: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """An object's box (y0, x0, h, w): standing on the ground below the ground line, or anywhere if floating."""
    spec = OBJECTS[name]
    h = size * rng.uniform(0.28, 0.42) * spec.scale
    h = min(h, 0.95 * size, 0.95 * size / spec.aspect)
    w = h * spec.aspect
    x0 = rng.uniform(0, size - w)
    if spec.floating:
        return rng.uniform(0, size - h), x0, h, w
    bottom = max(rng.uniform(min(ground + 0.15 * size, size), size), h)
    return bottom - h, x0, h, w


def _textures(pattern: np.ndarray) -> tuple[str, ...]:
    """Patterns covering at least TEXTURE_MIN of the image, dominant first (at least the dominant one)."""
    share = np.bincount(pattern.ravel(), minlength=len(TEXTURE_NAMES)) / pattern.size
    order = sorted(range(len(TEXTURE_NAMES)), key=lambda i: (-share[i], i))
    return tuple(TEXTURE_NAMES[i] for i in order if share[i] >= TEXTURE_MIN) or (TEXTURE_NAMES[order[0]],)


def draw_image(index: int, size: int = 64, seed: int = 0) -> Drawing:
    """Draw image `index` of the world `seed`: scene first, then materials and objects from the scene's tables."""
    rng = np.random.default_rng([seed, index])
    scene_name = SCENE_NAMES[index % len(SCENE_NAMES)]
    scene = SCENES[scene_name]
    cv = _Canvas(size)
    ground = _background(cv, scene, rng)
    names = [_weighted(rng, scene.objects) for _ in range(int(rng.integers(scene.count[0], scene.count[1] + 1)))]
    if rng.random() < DISTRACTOR_OBJECT:
        names.append(_pick(rng, OBJECT_NAMES))
    boxes = [(_place(n, size, ground, rng), n) for n in names]
    for box, name in sorted(boxes, key=lambda b: (b[0][0] + b[0][2], b[1])):  # far (higher bottom edge) first
        _paint_object(cv, name, box, rng)
    noise = rng.integers(-NOISE, NOISE + 1, size=(size, size, 3), dtype=np.int16)
    rgb = np.clip(PALETTE[cv.maps["color"]] + noise, 0, 255).astype(np.uint8)
    maps = dict(cv.maps)
    maps["color"] = (maps["color"] + 1).astype(np.int16)  # every pixel has a color: 1-based like the others
    return Drawing(rgb, maps, scene_name, _textures(cv.pattern))
