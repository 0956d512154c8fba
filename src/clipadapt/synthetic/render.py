"""A procedural world of captioned images, rendered with NumPy (identical on every machine).

A scene is a set of factors (shape, colour, pattern, size, count, position, background, style);
`render(scene)` draws it as an RGB uint8 array and `caption(scene, rng)` describes it in words,
leaving some factors out at random so that each word is learned on its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np

IMAGE_SIZE = 48
SUPERSAMPLE = 2

SHAPES = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "diamond",
    "hexagon",
    "heart",
    "crescent",
]
COLOURS = {
    "red": (215, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (235, 215, 35),
    "green": (45, 165, 55),
    "cyan": (35, 200, 210),
    "blue": (35, 75, 215),
    "purple": (135, 55, 195),
    "pink": (245, 125, 190),
    "white": (245, 245, 245),
    "brown": (125, 80, 35),
}
PATTERNS = ["plain", "striped", "dotted", "checkered"]
SIZES = ["small", "large"]
COUNTS = {1: "a", 2: "two", 3: "three"}
POSITIONS = ["center", "left", "right", "top", "bottom"]
BACKGROUNDS = ["plain", "noisy", "gradient", "grid", "striped"]
STYLES = {
    "photo": "a photo of",
    "drawing": "a drawing of",
    "sketch": "a sketch of",
    "pixel": "a pixel art image of",
}


@dataclass(frozen=True)
class Scene:
    """Every factor of one image; `seed` fixes the small details (jitter, noise, background tone)."""

    shape: str
    colour: str
    pattern: str = "plain"
    size: str = "large"
    count: int = 1
    position: str = "center"
    background: str = "plain"
    style: str = "photo"
    noise: float = 0.0  # extra pixel noise, for shifted domains
    seed: int = 0


def random_scene(rng: random.Random, **fixed) -> Scene:
    """A scene with every factor not given in `fixed` drawn uniformly."""
    values = dict(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        pattern=rng.choice(PATTERNS),
        size=rng.choice(SIZES),
        count=rng.choice(list(COUNTS)),
        position=rng.choice(POSITIONS),
        background=rng.choice(BACKGROUNDS),
        style=rng.choice(list(STYLES)),
        seed=rng.getrandbits(31),
    )
    values.update(fixed)
    scene = Scene(**values)
    if scene.count > 1:  # several objects fill the frame: a position word would be false
        scene = replace(scene, position="center")
    return scene


# ---- shapes as inside-tests on coordinates centred on the object, in units of its radius ---------------
def _polygon(x, y, n, rotation=0.0):
    inside = np.ones_like(x, dtype=bool)
    for k in range(n):
        a = rotation + 2 * np.pi * (k + 0.5) / n
        inside &= x * np.cos(a) + y * np.sin(a) < np.cos(np.pi / n)
    return inside


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    r = np.hypot(x, y)
    if shape == "circle":
        return r < 1
    if shape == "square":
        return np.maximum(abs(x), abs(y)) < 0.82
    if shape == "diamond":
        return abs(x) + abs(y) < 1
    if shape == "triangle":
        return _polygon(x, y + 0.2, 3, rotation=np.pi / 2)
    if shape == "hexagon":
        return _polygon(x, y, 6)
    if shape == "star":
        theta = np.arctan2(y, x) + np.pi / 2
        tri = np.abs(((theta / (2 * np.pi / 5)) % 1.0) - 0.5) * 2  # 1 at the tips, 0 between them
        return r < 0.42 + 0.58 * tri
    if shape == "cross":
        return ((abs(x) < 0.32) & (abs(y) < 0.95)) | ((abs(y) < 0.32) & (abs(x) < 0.95))
    if shape == "ring":
        return (r < 1) & (r > 0.58)
    if shape == "heart":
        xs, ys = x * 1.15, -y * 1.15 + 0.25
        return (xs**2 + ys**2 - 1) ** 3 - xs**2 * ys**3 < 0
    if shape == "crescent":
        return (r < 1) & (np.hypot(x - 0.45, y + 0.1) > 0.8)
    raise ValueError(f"unknown shape '{shape}'")


def _pattern_mask(pattern: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if pattern == "striped":
        return np.sin((x + y) * 7.0) > 0
    if pattern == "dotted":
        return (np.sin(x * 8.0) * np.sin(y * 8.0)) > 0.45
    if pattern == "checkered":
        return (np.sin(x * 5.0) * np.sin(y * 5.0)) > 0
    return np.ones_like(x, dtype=bool)


def _centres(scene: Scene, rng: np.random.Generator) -> tuple[list[tuple[float, float]], float]:
    jitter = lambda: rng.uniform(-0.04, 0.04)  # noqa: E731
    big = scene.size == "large"
    if scene.count == 1:
        radius = 0.36 if big else 0.22
        offset = 0.16 if big else 0.26
        cx, cy = {
            "center": (0, 0),
            "left": (-offset, 0),
            "right": (offset, 0),
            "top": (0, -offset),
            "bottom": (0, offset),
        }[scene.position]
        return [(0.5 + cx + jitter(), 0.5 + cy + jitter())], radius
    radius = (0.23 if big else 0.17) if scene.count == 2 else (0.2 if big else 0.15)
    slots = (
        [(0.26, 0.5), (0.74, 0.5)]
        if scene.count == 2
        else [(0.26, 0.28), (0.74, 0.28), (0.5, 0.73)]
    )
    return [(sx + jitter(), sy + jitter()) for sx, sy in slots], radius


def _background(scene: Scene, rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    tone = rng.uniform(0.15, 0.55) if scene.style != "sketch" else rng.uniform(0.85, 0.97)
    tint = rng.uniform(-0.06, 0.06, size=3)
    base = np.clip(tone + tint, 0, 1)[None, None, :] * np.ones(u.shape + (3,))
    if scene.background == "noisy":
        base = base + rng.normal(0, 0.08, size=base.shape)
    elif scene.background == "gradient":
        other = np.clip(rng.uniform(0.1, 0.7) + rng.uniform(-0.1, 0.1, size=3), 0, 1)
        t = (u * np.cos(rng.uniform(0, 2 * np.pi)) + v * np.sin(rng.uniform(0, 2 * np.pi)))[
            ..., None
        ]
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        base = base * (1 - t) + other[None, None, :] * t
    elif scene.background == "grid":
        lines = ((u * 8) % 1 < 0.12) | ((v * 8) % 1 < 0.12)
        base = np.where(lines[..., None], base + 0.25, base)
    elif scene.background == "striped":
        stripes = np.sin(v * 40 + u * 3) > 0.3
        base = np.where(stripes[..., None], base * 0.55, base)
    return base


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as an RGB uint8 array [size, size, 3]."""
    rng = np.random.default_rng(scene.seed)
    n = size * SUPERSAMPLE
    v, u = (np.mgrid[0:n, 0:n] + 0.5) / n
    img = _background(scene, rng, u, v)
    colour = np.array(COLOURS[scene.colour], dtype=np.float64) / 255.0
    centres, radius = _centres(scene, rng)
    rotation = rng.uniform(-0.25, 0.25)
    for cx, cy in centres:
        x, y = (u - cx) / radius, (v - cy) / radius
        if scene.style == "sketch":  # a wobbly hand-drawn line
            x = x + 0.06 * np.sin(y * 9 + rng.uniform(0, 6))
            y = y + 0.06 * np.sin(x * 9 + rng.uniform(0, 6))
        xr = x * np.cos(rotation) - y * np.sin(rotation)
        yr = x * np.sin(rotation) + y * np.cos(rotation)
        inside = _inside(scene.shape, xr, yr)
        if scene.style in ("drawing", "sketch"):  # outline only: inside minus a shrunk copy
            width = 0.8 if scene.style == "drawing" else 0.84
            inside = inside & ~_inside(scene.shape, xr / width, yr / width)
        on = (
            _pattern_mask(scene.pattern, xr, yr)
            if scene.style not in ("drawing", "sketch")
            else inside
        )
        shade = 1.0 - 0.18 * (yr[..., None] + 1) / 2 if scene.style == "photo" else 1.0
        fill = np.where(on[..., None], colour, colour * 0.45) * shade
        img = np.where(inside[..., None], fill, img)
    if scene.noise > 0:
        img = img + rng.normal(0, scene.noise, size=img.shape)
    img = np.clip(img, 0, 1)
    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))  # anti-aliasing
    if scene.style == "pixel":
        block = size // 16
        small = img.reshape(size // block, block, size // block, block, 3).mean(axis=(1, 3))
        img = np.repeat(np.repeat(small, block, axis=0), block, axis=1)
    return (img * 255 + 0.5).astype(np.uint8)


def plural(noun: str) -> str:
    """English plural of a shape noun."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def caption(scene: Scene, rng: random.Random, must: str | None = None) -> str:
    """A sentence describing the scene, each factor mentioned with some probability (`must` always)."""
    words = []
    if must == "size" or rng.random() < 0.5:
        words.append(scene.size)
    if must == "colour" or rng.random() < 0.85:
        words.append(scene.colour)
    if (must == "pattern" or rng.random() < 0.55) and scene.style in ("photo", "pixel"):
        words.append(scene.pattern)
    noun = (
        scene.shape if must == "shape" or rng.random() < 0.85 else rng.choice(["shape", "object"])
    )
    noun = noun if scene.count == 1 else plural(noun)
    count = COUNTS[scene.count]
    article = "an" if count == "a" and (words[0] if words else noun)[0] in "aeiou" else count
    text = f"{STYLES[scene.style]} {article} {' '.join(words + [noun])}"
    if (
        scene.count == 1
        and scene.position != "center"
        and (must == "position" or rng.random() < 0.6)
    ):
        text += f" on the {scene.position}"
    elif scene.count == 1 and (must == "position" or rng.random() < 0.15):
        text += " in the center"
    if must == "background" or rng.random() < 0.5:
        text += f" on a {scene.background} background"
    return text + "."


# Which factor a group of otherwise identical scenes differs in, and how often (pretraining batches).
CONTRAST_FACTORS = {
    "shape": 0.35,
    "colour": 0.12,
    "count": 0.1,
    "position": 0.1,
    "pattern": 0.1,
    "size": 0.08,
    "style": 0.08,
    "background": 0.07,
}
FACTOR_VALUES = {
    "shape": SHAPES,
    "colour": list(COLOURS),
    "count": list(COUNTS),
    "position": POSITIONS,
    "pattern": PATTERNS,
    "size": SIZES,
    "style": list(STYLES),
    "background": BACKGROUNDS,
}


def contrast_group(
    rng: random.Random, size: int = 4, factor: str | None = None
) -> tuple[list[Scene], str]:
    """`size` scenes identical but for one factor, so a caption must name that factor to match its image."""
    factor = (
        factor or rng.choices(list(CONTRAST_FACTORS), weights=list(CONTRAST_FACTORS.values()))[0]
    )
    fixed = (
        {"count": 1, "style": rng.choice(["photo", "pixel"])}
        if factor in ("position", "pattern")
        else {}
    )
    base = random_scene(rng, **fixed)
    values = rng.sample(FACTOR_VALUES[factor], min(size, len(FACTOR_VALUES[factor])))
    scenes = [random_scene(random.Random(0), **{**base.__dict__, factor: v}) for v in values]
    return scenes, factor


def vocabulary() -> list[str]:
    """Every word a caption or a synthetic class prompt can use."""
    words = set()
    for phrase in [
        *STYLES.values(),
        *SHAPES,
        *map(plural, SHAPES),
        *COLOURS,
        *PATTERNS,
        *SIZES,
        *COUNTS.values(),
        *POSITIONS,
        *BACKGROUNDS,
        "an shape object shapes objects on the in background center .",
        "of a photo",
    ]:
        words.update(phrase.replace(".", " .").split())
    return sorted(words)
