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
from pipeline.concepts.vocabulary import (
    DISTRACTOR_GROUND, DISTRACTOR_OBJECT, MAP_NAMES, MATERIAL_NAMES, MATERIAL_PATTERN, NOISE, OBJECTS, OBJECT_NAMES, PALETTE,
    PART_NAMES, SCENES, SCENE_NAMES, SPLIT_TOP, SceneSpec, Shape, TEXTURE_MIN, TEXTURE_NAMES, _C,
)


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
