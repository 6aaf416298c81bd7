"""``hitl synth``: a synthetic COCO-format detection dataset whose truth is known.

Real COCO cannot be downloaded here, so the demo, the tests and the benchmarks use shapes
(circle, square, triangle, ...) drawn on textured, noisy backgrounds. Colors are only
loosely tied to the class, so a model has to learn shape. Every truth box is tight around
the *visible* pixels of its shape, and a shape is only placed when no earlier shape ends
up more than a third hidden by it (occlusion is computed on the drawn masks).

Output layout (``DIR``)::

    images/{train,val,pool}/000001.png      # COCO file_name is relative to DIR/images
    annotations/train.json                  # labels with injected errors
    annotations/train_truth.json            # clean labels of the same images
    annotations/val.json                    # clean, held out
    annotations/pool.json                   # images only ("annotations": [])
    annotations/pool_truth.json
    noise_report.json                       # every injected error, requested/realised rates
    conditions.json                         # only with a tail: image id -> rare condition
    images/val_drifted/, annotations/val_drifted.json, drift_report.json   # only with drift

**A long tail** (``class_mix``, ``tail``), as real data has it: class imbalance (a relative
weight per class, e.g. a rare class at 5 % of objects) and rare conditions, each given to a
share of images (in every split alike): ``small`` (all objects 6-12 % of the image side),
``occluded`` (more objects, up to 60 % hidden instead of a third) and ``background`` (an
unusual, busy checkerboard background). Each image's condition is in ``conditions.json``.

**Systematic errors** (``systematic``), as labeling vendors make them, on top of the random
noise: ``confusion`` relabels a share of one class's boxes as another class (the same two
classes every time), and ``vendor`` gives a share of the train images to one "vendor" who
shifts every box by the same fraction of its size. They are listed in ``noise_report.json``
as ``class_swap`` and ``bad_box`` errors with ``"systematic": "confusion" | "vendor"``; the
random noise then goes to the boxes they left alone.

**Drift** (``drift``), as a new season or a new camera brings it: the pool, and an extra
clean held-out split ``val_drifted`` (``drift_val`` images, default as many as ``val``), are
drawn in a *drifted world*, while train and val keep the look the model learned. There each
image, with probability ``share``, gets every listed kind: ``background`` (a background
family never drawn otherwise: dark, grainy coloured noise under broad diagonal bands; the
shapes stay plain to see), ``colour`` (shapes in muted, dusty tones absent from
:data:`PALETTE`, lower contrast; still only loosely tied to the class), ``scale`` (every
diameter uniform in ``scale``, by default 5-12 % of the image side instead of 10-50 %) and
``class_mix`` (classes drawn with other weights, by default the last class at 70 %). The
rest of the drifted world's images look like the original. Drift takes the place of a tail
condition's background or size, not of its occlusion. As everywhere here the images are
synthetic and the truth is known: ``drift_report.json`` lists every drifted image with the
kinds it got, and the pool's true boxes are in ``pool_truth.json`` as before.

Image ids are unique across splits (train first, then val, then pool, then val_drifted);
annotation ids are unique across all files. In ``train.json`` an annotation that is not an
injected error has the same id, class and box as in ``train_truth.json``; a ``spurious`` one
has a new id (larger than every truth id).

The same arguments and seed give the same bytes in every file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from hitl_plugin.boxes import iou

log = logging.getLogger(__name__)

#: Class names in category-id order (id = index + 1).
SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ellipse",
)
KINDS: tuple[str, ...] = ("missing", "spurious", "class_swap", "bad_box")
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "pool")

#: A shape is rejected if it would hide more than this fraction of an earlier one.
MAX_OCCLUSION = 1.0 / 3.0
#: Shape size (diameter of its bounding circle) as a fraction of the image side.
MIN_SIZE, MAX_SIZE = 0.10, 0.50
MIN_OBJECTS, MAX_OBJECTS = 1, 6
#: IoU range of a ``bad_box`` with the truth box.
BAD_BOX_IOU = (0.2, 0.6)
#: A spurious box may overlap drawn shapes by at most this fraction of its pixels.
SPURIOUS_MAX_COVER = 0.05
#: The rare conditions of a long tail (see the module docstring).
CONDITIONS: tuple[str, ...] = ("small", "occluded", "background")
SMALL_SIZE = (0.06, 0.12)
OCCLUDED_MAX_OCCLUSION = 0.6
OCCLUDED_OBJECTS = (4, 8)
#: The kinds of drift (see the module docstring), and the splits drawn in the drifted world.
DRIFT_KINDS: tuple[str, ...] = ("background", "colour", "scale", "class_mix")
DRIFTED_SPLITS: tuple[str, ...] = ("pool", "val_drifted")
#: Default ``scale`` drift: diameters as a fraction of the image side.
DRIFT_SCALE = (0.05, 0.12)
#: Default ``class_mix`` drift: the last class's share of objects (the rest share equally).
DRIFT_SKEWED_SHARE = 0.7

#: Base colors (RGB). Each class prefers two of them, but half of all shapes get any color.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (220, 50, 40), (40, 160, 60), (50, 80, 210), (230, 200, 40),
    (200, 60, 200), (40, 190, 200), (240, 140, 30), (235, 235, 235),
)
#: The ``colour`` drift's palette: muted, dusty mid-tones, none of them in :data:`PALETTE`.
DRIFT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (150, 110, 120), (110, 135, 105), (120, 115, 155), (165, 145, 105),
    (95, 130, 140), (140, 100, 80), (175, 165, 150), (95, 95, 125),
)


# -- geometry ------------------------------------------------------------------------------

def _regular(n: int, radius: float, angle: float, inner: float | None = None) -> np.ndarray:
    """Vertices of a regular polygon (or a star when ``inner`` is given), centered at 0."""
    if inner is None:
        t = angle + np.arange(n) * 2 * math.pi / n
        return np.stack([np.cos(t), np.sin(t)], axis=1) * radius
    t = angle + np.arange(2 * n) * math.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, radius, radius * inner)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _outline(name: str, radius: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Polygon vertices (centered at 0) of a shape whose bounding circle has ``radius``."""
    if name == "circle":
        return _regular(48, radius, 0.0)
    if name == "square":
        return _regular(4, radius, angle)
    if name == "triangle":
        return _regular(3, radius, angle)
    if name == "star":
        return _regular(5, radius, angle, inner=float(rng.uniform(0.38, 0.5)))
    if name == "hexagon":
        return _regular(6, radius, angle)
    if name == "cross":
        a = radius / math.sqrt(1 + 0.35**2)  # arm half-length so the corners touch the circle
        b = a * 0.35
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a],
                        [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
        return _rotate(pts, angle)
    if name == "diamond":
        pts = np.array([[radius, 0.0], [0.0, radius * 0.55], [-radius, 0.0], [0.0, -radius * 0.55]])
        return _rotate(pts, angle)
    if name == "ellipse":
        t = np.arange(48) * 2 * math.pi / 48
        pts = np.stack([np.cos(t) * radius, np.sin(t) * radius * float(rng.uniform(0.45, 0.62))],
                       axis=1)
        return _rotate(pts, angle)
    raise ValueError(f"unknown shape {name!r}")


def _mask(points: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), 0)
    xy = [(float(x + cx), float(y + cy)) for x, y in points]
    ImageDraw.Draw(canvas).polygon(xy, fill=255)
    return np.asarray(canvas) > 127


def _tight_box(mask: np.ndarray) -> list[float] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


# -- one image -----------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float RGB background: a base color, low-frequency texture, stripes or blotches."""
    from PIL import Image

    base = rng.uniform(40, 215, size=3)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    for cells, amp in ((int(rng.integers(3, 7)), rng.uniform(20, 55)),
                       (int(rng.integers(10, 24)), rng.uniform(8, 25))):
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
        up = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32)
        img += (up - 127.5) / 127.5 * amp
    if rng.random() < 0.35:  # faint stripes
        period = rng.uniform(6, 20)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size]
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
        img += (wave * rng.uniform(8, 22))[..., None] * rng.uniform(0.5, 1.0, size=3)
    return img


def _unusual_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A busy, high-contrast checkerboard of two random colours, slightly rotated."""
    a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    cell = rng.uniform(4, 10)
    theta = rng.uniform(0, math.pi / 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    check = ((np.floor(u / cell) + np.floor(v / cell)) % 2)[..., None]
    return (a * check + b * (1 - check)).astype(np.float32)


def _drifted_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """The ``background`` drift: dark, grainy coloured noise (fine and 2-pixel grain, each
    channel its own) under broad diagonal bands of a second colour."""
    base = rng.uniform(8, 35, size=3)
    band = rng.uniform(25, 80, size=3)
    period = size * float(rng.uniform(0.3, 0.6))
    theta = math.pi / 4 + math.pi / 2 * int(rng.integers(0, 2)) + float(rng.uniform(-0.25, 0.25))
    phase = float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = 0.5 + 0.5 * np.sin((xx * math.cos(theta) + yy * math.sin(theta))
                              * 2 * math.pi / period + phase)
    img = (base + wave[..., None] * band).astype(np.float32)
    half = (size + 1) // 2
    coarse = rng.normal(0, float(rng.uniform(15, 25)), size=(half, half, 3)).astype(np.float32)
    img += np.kron(coarse, np.ones((2, 2, 1), np.float32))[:size, :size]
    img += rng.normal(0, float(rng.uniform(10, 18)), size=img.shape).astype(np.float32)
    return img


def _color(rng: np.random.Generator, cls: int,
           palette: tuple[tuple[int, int, int], ...] = PALETTE) -> np.ndarray:
    if rng.random() < 0.5:
        choice = palette[(cls * 3 + int(rng.integers(0, 2))) % len(palette)]
    else:
        choice = palette[int(rng.integers(0, len(palette)))]
    return np.clip(np.array(choice, np.float32) + rng.normal(0, 18, size=3), 0, 255)


def _render(
    rng: np.random.Generator, size: int, classes: int, *,
    class_p: np.ndarray | None = None, condition: str | None = None,
    look: frozenset[str] = frozenset(), size_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, list[dict], np.ndarray]:
    """Draw one image.

    :param class_p: probability of each class (None: uniform).
    :param condition: a rare condition of :data:`CONDITIONS`, or None.
    :param look: the drifted look, a subset of ``{"background", "colour"}`` (see
        :data:`DRIFT_KINDS`; the ``scale`` and ``class_mix`` drift come as ``size_range``
        and ``class_p``). Empty: the original look, drawn exactly as ever.
    :param size_range: diameters uniform in this range (fractions of ``size``), in place of
        the original sizes and of the ``small`` condition's; None: those.
    :returns: uint8 RGB pixels, its objects (class index, tight box of the visible pixels,
        visible and full pixel counts) and the owner map (object index per pixel, -1 for
        background).
    """
    from PIL import Image, ImageFilter

    unknown = set(look) - {"background", "colour"}
    if unknown:
        raise ValueError(f"look: unknown {sorted(unknown)}; use background, colour")
    if "background" in look:
        img = _drifted_background(rng, size)
    elif condition == "background":
        img = _unusual_background(rng, size)
    else:
        img = _background(rng, size)
    palette = DRIFT_PALETTE if "colour" in look else PALETTE
    max_occlusion = OCCLUDED_MAX_OCCLUSION if condition == "occluded" else MAX_OCCLUSION
    low, high = OCCLUDED_OBJECTS if condition == "occluded" else (MIN_OBJECTS, MAX_OBJECTS)
    wanted = int(rng.integers(low, high + 1))
    owner = np.full((size, size), -1, dtype=np.int16)
    objects: list[dict] = []
    tries = 0
    while len(objects) < wanted and tries < wanted * 8:
        tries += 1
        cls = (int(rng.integers(0, classes)) if class_p is None
               else int(rng.choice(classes, p=class_p)))
        if size_range is not None:
            diameter = size * float(rng.uniform(*size_range))
        elif condition == "small":
            diameter = size * float(rng.uniform(*SMALL_SIZE))
        else:
            diameter = size * float(rng.uniform(MIN_SIZE, MAX_SIZE) if rng.random() < 0.6
                                    else rng.uniform(MIN_SIZE, 0.25))
        radius = diameter / 2
        cx = float(rng.uniform(radius, size - radius))
        cy = float(rng.uniform(radius, size - radius))
        points = _outline(SHAPES[cls], radius, float(rng.uniform(0, 2 * math.pi)), rng)
        mask = _mask(points, cx, cy, size)
        full = int(mask.sum())
        if full < 12:
            continue
        # would this shape hide more than a third of an earlier one?
        covered = owner[mask]
        ok = True
        for index, obj in enumerate(objects):
            left = obj["visible"] - int((covered == index).sum())
            if left < (1 - max_occlusion) * obj["full"]:
                ok = False
                break
        if not ok:
            continue
        for index in range(len(objects)):
            objects[index]["visible"] -= int((covered == index).sum())
        owner[mask] = len(objects)
        color = _color(rng, cls, palette)
        ys, xs = np.nonzero(mask)  # a gentle linear shading across the shape
        gx, gy = rng.uniform(-1.0, 1.0, size=2) * 40.0 / max(radius, 1.0)
        shade = ((xs - cx) * gx + (ys - cy) * gy).astype(np.float32)[:, None]
        img[ys, xs] = color + shade
        objects.append({"cls": cls, "full": full, "visible": full})
    img += rng.normal(0, float(rng.uniform(4, 14)), size=img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    out = out.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(out, dtype=np.float32)
    pixels += rng.normal(0, float(rng.uniform(2, 8)), size=pixels.shape).astype(np.float32)
    result = []
    for index, obj in enumerate(objects):
        visible = owner == index
        box = _tight_box(visible)
        if box is None:
            continue
        result.append({"cls": obj["cls"], "bbox": box, "area": float(visible.sum()),
                       "full": obj["full"], "visible": int(visible.sum())})
    return np.clip(pixels, 0, 255).astype(np.uint8), result, owner


# -- noise ---------------------------------------------------------------------------------

def parse_split(text: str | dict[str, float] | None) -> dict[str, float]:
    """``missing=0.25,spurious=0.25,...`` -> fractions over :data:`KINDS` summing to 1."""
    if text is None:
        return {kind: 1.0 / len(KINDS) for kind in KINDS}
    if isinstance(text, dict):
        parts = dict(text)
    else:
        parts = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"noise split item {item!r} must be KIND=FRACTION")
            parts[key.strip()] = float(value)
    unknown = set(parts) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown noise kind(s) {sorted(unknown)}; use {list(KINDS)}")
    if any(not math.isfinite(v) or v < 0 for v in parts.values()):
        raise ValueError("noise split fractions must be finite and >= 0")
    total = sum(parts.values())
    if total <= 0:
        raise ValueError("noise split fractions must not all be 0")
    return {kind: parts.get(kind, 0.0) / total for kind in KINDS}


def _counts(n: int, split: dict[str, float]) -> dict[str, int]:
    """Largest-remainder apportionment of ``n`` errors over the kinds."""
    raw = {k: n * split[k] for k in KINDS}
    counts = {k: int(math.floor(v)) for k, v in raw.items()}
    order = sorted(KINDS, key=lambda k: (-(raw[k] - counts[k]), KINDS.index(k)))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _bad_box(
    rng: np.random.Generator, box: list[float], size: int
) -> tuple[list[float], float] | None:
    """A box inside the image whose IoU with ``box`` lies in :data:`BAD_BOX_IOU`."""
    x, y, w, h = box
    for _ in range(300):
        sw, sh = np.exp(rng.uniform(-0.9, 0.9, size=2))
        nw, nh = max(2.0, round(w * sw)), max(2.0, round(h * sh))
        cx = x + w / 2 + rng.uniform(-0.7, 0.7) * w
        cy = y + h / 2 + rng.uniform(-0.7, 0.7) * h
        nx = float(min(max(0.0, round(cx - nw / 2)), size - nw))
        ny = float(min(max(0.0, round(cy - nh / 2)), size - nh))
        if nx < 0 or ny < 0:
            continue
        cand = [nx, ny, float(nw), float(nh)]
        value = iou(cand, box)
        if BAD_BOX_IOU[0] <= value <= BAD_BOX_IOU[1]:
            return cand, value
    return None


def _spurious_box(rng: np.random.Generator, shapes: np.ndarray, boxes: list[list[float]],
                  size: int) -> list[float] | None:
    """A box over background: few shape pixels inside, little overlap with truth boxes."""
    for _ in range(60):
        w = round(size * rng.uniform(0.10, 0.30))
        h = round(w * float(np.exp(rng.uniform(-0.4, 0.4))))
        h = int(min(max(h, 4), size))
        x = int(rng.integers(0, size - w + 1))
        y = int(rng.integers(0, size - h + 1))
        cand = [float(x), float(y), float(w), float(h)]
        if shapes[y:y + h, x:x + w].mean() > SPURIOUS_MAX_COVER:
            continue
        if any(iou(cand, b) > 0.1 for b in boxes):
            continue
        return cand
    return None


# -- long tail and systematic errors ------------------------------------------------------

def _class_probabilities(mix, classes: int, field: str = "class_mix") -> np.ndarray | None:
    if mix is None:
        return None
    weights = np.array([float(v) for v in mix], dtype=float)
    if len(weights) != classes:
        raise ValueError(f"{field} has {len(weights)} weights for {classes} classes")
    if not np.all(np.isfinite(weights)) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"{field} weights must be finite, >= 0 and not all 0")
    return weights / weights.sum()


def _check_tail(tail: dict[str, float] | None) -> dict[str, float] | None:
    if not tail:
        return None
    unknown = set(tail) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown tail condition(s) {sorted(unknown)}; use {list(CONDITIONS)}")
    shares = {c: float(tail.get(c, 0.0)) for c in CONDITIONS}
    if any(not 0.0 <= v <= 1.0 for v in shares.values()) or sum(shares.values()) > 1.0:
        raise ValueError("tail shares must be within [0, 1] and sum to at most 1")
    return shares


def _draw_condition(rng: np.random.Generator, tail: dict[str, float] | None) -> str | None:
    if not tail:
        return None
    u, edge = float(rng.random()), 0.0
    for condition in CONDITIONS:
        edge += tail[condition]
        if u < edge:
            return condition
    return None


def _check_drift(drift: dict | None, classes: int) -> dict | None:
    """The normalized drift spec: ``kinds`` in :data:`DRIFT_KINDS` order, ``share``, and
    ``class_mix`` / ``scale`` (defaults filled in) when their kind is listed."""
    if drift is None:
        return None
    if not isinstance(drift, dict):
        raise ValueError(f"drift must be a dict with kinds, share, class_mix, scale; "
                         f"got {type(drift).__name__}")
    unknown = set(drift) - {"kinds", "share", "class_mix", "scale"}
    if unknown:
        raise ValueError(f"drift: unknown key(s) {sorted(unknown)}; "
                         "use kinds, share, class_mix, scale")
    kinds = drift.get("kinds") or ()
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in DRIFT_KINDS:
            raise ValueError(f"drift.kinds: unknown kind {kind!r}; use {', '.join(DRIFT_KINDS)}")
    if not kinds:
        raise ValueError(f"drift.kinds: name at least one of {', '.join(DRIFT_KINDS)}")
    out: dict = {"kinds": [k for k in DRIFT_KINDS if k in kinds]}
    share = float(drift.get("share", 1.0))
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise ValueError(f"drift.share must be in (0, 1], got {share}")
    out["share"] = share
    for key in ("class_mix", "scale"):
        if drift.get(key) is not None and key not in out["kinds"]:
            raise ValueError(f"drift.{key} is given but {key!r} is not in drift.kinds")
    if "class_mix" in out["kinds"]:
        mix = drift.get("class_mix")
        if mix is None:
            rest = round((1.0 - DRIFT_SKEWED_SHARE) / (classes - 1), 6) if classes > 1 else 0.0
            mix = [rest] * (classes - 1) + [DRIFT_SKEWED_SHARE if classes > 1 else 1.0]
        _class_probabilities(mix, classes, field="drift.class_mix")
        out["class_mix"] = [float(v) for v in mix]
    if "scale" in out["kinds"]:
        scale = drift.get("scale")
        scale = list(DRIFT_SCALE) if scale is None else scale
        try:
            lo, hi = (float(v) for v in scale)
        except (TypeError, ValueError):
            raise ValueError(f"drift.scale must be [lo, hi], got {scale!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi <= 0.6):
            raise ValueError(f"drift.scale must be [lo, hi] with 0 < lo <= hi <= 0.6, "
                             f"got [{lo}, {hi}]")
        out["scale"] = [lo, hi]
    return out


def _check_systematic(systematic: dict | None, classes: int) -> dict | None:
    if not systematic:
        return None
    unknown = set(systematic) - {"confusion", "vendor"}
    if unknown:
        raise ValueError(f"unknown systematic error(s) {sorted(unknown)}; use confusion, vendor")
    out: dict = {}
    names = SHAPES[:classes]
    if systematic.get("confusion"):
        c = systematic["confusion"]
        if c.get("from") not in names or c.get("to") not in names or c["from"] == c["to"]:
            raise ValueError(f"systematic.confusion needs two different classes of {list(names)}")
        rate = float(c.get("rate", 0.0))
        if not 0.0 < rate <= 1.0:
            raise ValueError("systematic.confusion.rate must be in (0, 1]")
        out["confusion"] = {"from": c["from"], "to": c["to"], "rate": rate}
    if systematic.get("vendor"):
        v = systematic["vendor"]
        share = float(v.get("share", 0.0))
        offset = [float(x) for x in v.get("offset", ())]
        if not 0.0 < share <= 1.0 or len(offset) != 2 or not all(map(math.isfinite, offset)):
            raise ValueError("systematic.vendor needs share in (0, 1] and offset [fx, fy]")
        out["vendor"] = {"share": share, "offset": offset}
    return out or None


def _systematic_errors(systematic: dict, truth_train: list[dict], noisy: dict[int, dict],
                       train_ids: list[int], size: int, rng: np.random.Generator) -> list[dict]:
    """Apply the consistent confusion and the vendor's box habit to ``noisy``; list them."""
    errors: list[dict] = []
    confusion = systematic.get("confusion")
    if confusion:
        src = SHAPES.index(confusion["from"]) + 1
        dst = SHAPES.index(confusion["to"]) + 1
        for ann in truth_train:
            if ann["category_id"] == src and rng.random() < confusion["rate"]:
                noisy[ann["id"]]["category_id"] = dst
                errors.append({"image_id": ann["image_id"], "kind": "class_swap",
                               "annotation_id": ann["id"], "truth_category_id": src,
                               "category_id": dst, "systematic": "confusion"})
    vendor = systematic.get("vendor")
    if vendor:
        swapped = {e["annotation_id"] for e in errors}
        picked = {i for i in train_ids if rng.random() < vendor["share"]}
        fx, fy = vendor["offset"]
        for ann in truth_train:
            if ann["image_id"] not in picked or ann["id"] in swapped:
                continue
            x, y, w, h = ann["bbox"]
            nx = float(min(max(0.0, round(x + fx * w)), size - w))
            ny = float(min(max(0.0, round(y + fy * h)), size - h))
            box = [nx, ny, float(w), float(h)]
            value = iou(box, ann["bbox"])
            if value > 0.9:  # at an edge the shift is lost: leave that box right
                continue
            noisy[ann["id"]].update({"bbox": box})
            errors.append({"image_id": ann["image_id"], "kind": "bad_box",
                           "annotation_id": ann["id"], "truth_bbox": ann["bbox"], "bbox": box,
                           "iou": round(value, 4), "systematic": "vendor"})
    return errors


def _objects_per_class(truth: dict[str, list[dict]], categories: list[dict]) -> dict[str, int]:
    counts = {c["name"]: 0 for c in categories}
    names = {c["id"]: c["name"] for c in categories}
    for anns in truth.values():
        for ann in anns:
            counts[names[ann["category_id"]]] += 1
    return counts


def load_truth(out: str | os.PathLike[str]) -> dict:
    """The true boxes of a generated folder's train and pool images, in one COCO dict: what
    the SIMULATED annotators "see" (a folder without a pool gives the train truth)."""
    ann = Path(out) / "annotations"
    train = json.loads((ann / "train_truth.json").read_text())
    images, anns = list(train["images"]), list(train["annotations"])
    pool_file = ann / "pool_truth.json"
    if pool_file.is_file():
        pool = json.loads(pool_file.read_text())
        images += pool["images"]
        anns += pool["annotations"]
    return {"categories": train["categories"], "images": images, "annotations": anns}


# -- writing -------------------------------------------------------------------------------

def _dump(path: Path, data: Any) -> None:
    text = json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _coco(images: list[dict], annotations: list[dict], categories: list[dict]) -> dict:
    return {
        "info": {"description": "hitl synthetic shapes", "version": "1"},
        "images": images,
        "annotations": sorted(annotations, key=lambda a: a["id"]),
        "categories": categories,
    }


def generate(
    out: str | os.PathLike[str],
    *,
    train: int = 200,
    val: int = 50,
    pool: int = 100,
    classes: int = 4,
    imgsz: int = 128,
    noise: float = 0.1,
    noise_split: str | dict[str, float] | None = None,
    seed: int = 0,
    class_mix: list[float] | tuple[float, ...] | None = None,
    tail: dict[str, float] | None = None,
    systematic: dict | None = None,
    drift: dict | None = None,
    drift_val: int | None = None,
) -> dict:
    """Write a synthetic dataset to ``out`` (see the module docstring for the layout).

    :param out: output folder (created; existing files of the same names are overwritten).
    :param train: number of train images (labels get injected errors).
    :param val: number of clean held-out images.
    :param pool: number of unlabeled pool images (truth in ``pool_truth.json``).
    :param classes: number of classes, 1..len(SHAPES).
    :param imgsz: image side in pixels (square images).
    :param noise: fraction of train truth boxes affected by injected errors.
    :param noise_split: fractions per kind (dict or ``missing=0.25,spurious=...``);
        default equal.
    :param seed: random seed; same arguments and seed give the same bytes.
    :param class_mix: a relative weight per class (class imbalance); None: uniform.
    :param tail: share of images per rare condition (:data:`CONDITIONS`), e.g.
        ``{"small": 0.08, "occluded": 0.08, "background": 0.06}``; None: none.
    :param systematic: ``{"confusion": {"from": NAME, "to": NAME, "rate": r}, "vendor":
        {"share": s, "offset": [fx, fy]}}`` (either key may be left out): a share ``r`` of
        the train boxes of one class labeled as another, and a share ``s`` of train images
        whose every box is shifted by ``fx`` x its width and ``fy`` x its height.
    :param drift: ``{"kinds": [...], "share": s, "class_mix": [w1..wK], "scale": [lo, hi]}``:
        the pool and ``val_drifted`` are drawn in a drifted world where a share ``s``
        (default 1.0) of the images gets every kind in ``kinds`` (a non-empty subset of
        :data:`DRIFT_KINDS`). ``class_mix`` (only with that kind; default: the last class
        70 %, the others sharing the rest equally) and ``scale`` (only with that kind;
        diameter as a fraction of the image side, ``0 < lo <= hi <= 0.6``; default
        :data:`DRIFT_SCALE`). Truth in ``drift_report.json``. None: no drift, and the same
        bytes as without this parameter.
    :param drift_val: number of clean held-out images in the drifted world (only with
        ``drift``); None: as many as ``val``.
    :returns: small summary: counts, classes, requested and realised noise, drift, seconds.
    """
    from PIL import Image

    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be 1..{len(SHAPES)}, got {classes}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    if min(train, val, pool) < 0:
        raise ValueError("image counts must be >= 0")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    split = parse_split(noise_split)
    if classes == 1 and split["class_swap"] > 0 and noise > 0:
        raise ValueError("class_swap noise needs at least 2 classes")
    class_p = _class_probabilities(class_mix, classes)
    tail = _check_tail(tail)
    systematic = _check_systematic(systematic, classes)
    drift = _check_drift(drift, classes)
    if drift_val is not None:
        if drift is None:
            raise ValueError("drift_val needs a drift spec (drift)")
        if drift_val < 0:
            raise ValueError(f"drift_val must be >= 0, got {drift_val}")
    drift_p = (_class_probabilities(drift["class_mix"], classes, field="drift.class_mix")
               if drift and "class_mix" in drift["kinds"] else None)
    drift_size = tuple(drift["scale"]) if drift and "scale" in drift["kinds"] else None
    splits = list(zip(SPLIT_NAMES, (train, val, pool)))
    if drift:
        splits.append(("val_drifted", val if drift_val is None else int(drift_val)))

    started = time.monotonic()
    root = Path(out)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"}
                  for i in range(classes)]

    images: dict[str, list[dict]] = {}
    truth: dict[str, list[dict]] = {}
    shape_masks: dict[int, np.ndarray] = {}  # train image id -> union of shape pixels
    conditions: dict[int, str] = {}
    drifted: dict[int, list[str]] = {}  # image id -> drift kinds applied
    image_id, ann_id, done = 0, 0, 0
    total = sum(count for _, count in splits)
    for name, count in splits:
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        images[name], truth[name] = [], []
        for _ in range(count):
            image_id += 1
            rng = np.random.default_rng([seed, image_id])
            condition = _draw_condition(np.random.default_rng([seed, image_id, 11]), tail)
            if condition:
                conditions[image_id] = condition
            kinds: list[str] = []
            if (drift and name in DRIFTED_SPLITS
                    and np.random.default_rng([seed, image_id, 13]).random() < drift["share"]):
                kinds = list(drift["kinds"])
                drifted[image_id] = kinds
            pixels, objects, owner = _render(
                rng, imgsz, classes, condition=condition,
                class_p=drift_p if "class_mix" in kinds else class_p,
                look=frozenset(kinds) & {"background", "colour"},
                size_range=drift_size if "scale" in kinds else None)
            file_name = f"{name}/{image_id:06d}.png"
            Image.fromarray(pixels).save(root / "images" / file_name, format="PNG",
                                         compress_level=6)
            images[name].append({"id": image_id, "file_name": file_name,
                                 "width": imgsz, "height": imgsz})
            for obj in objects:
                ann_id += 1
                truth[name].append({
                    "id": ann_id, "image_id": image_id, "category_id": obj["cls"] + 1,
                    "bbox": obj["bbox"], "area": obj["area"], "iscrowd": 0,
                })
            if name == "train":
                shape_masks[image_id] = owner >= 0
            done += 1
            if done % 250 == 0 or done == total:
                log.info("synth: %s/%s images", done, total)

    # -- inject errors into train -----------------------------------------------------------
    nrng = np.random.default_rng([seed, 7_000_001])
    truth_train = truth["train"]
    n_truth = len(truth_train)
    wanted = _counts(int(round(noise * n_truth)), split)
    order = [int(i) for i in nrng.permutation(n_truth)]
    noisy = {a["id"]: dict(a) for a in truth_train}
    errors: list[dict] = _systematic_errors(
        systematic, truth_train, noisy, [img["id"] for img in images["train"]], imgsz,
        np.random.default_rng([seed, 7_000_002])) if systematic else []
    touched = {e["annotation_id"] for e in errors}
    order = [i for i in order if truth_train[i]["id"] not in touched]
    cursor = 0

    def next_candidates():
        nonlocal cursor
        while cursor < len(order):
            ann = truth_train[order[cursor]]
            cursor += 1
            yield ann

    for kind in ("missing", "class_swap", "bad_box"):
        made = 0
        if wanted[kind] == 0:
            continue
        for ann in next_candidates():
            entry = {"image_id": ann["image_id"], "kind": kind, "annotation_id": ann["id"]}
            if kind == "missing":
                del noisy[ann["id"]]
            elif kind == "class_swap":
                others = [c for c in range(1, classes + 1) if c != ann["category_id"]]
                new = others[int(nrng.integers(0, len(others)))]
                noisy[ann["id"]]["category_id"] = new
                entry.update({"truth_category_id": ann["category_id"], "category_id": new})
            else:
                found = _bad_box(nrng, ann["bbox"], imgsz)
                if found is None:
                    continue  # a tiny box at an edge; take the next candidate
                box, value = found
                noisy[ann["id"]].update({"bbox": box, "area": box[2] * box[3]})
                entry.update({"truth_bbox": ann["bbox"], "bbox": box, "iou": round(value, 4)})
            errors.append(entry)
            made += 1
            if made == wanted[kind]:
                break

    boxes_by_image: dict[int, list[list[float]]] = {img["id"]: [] for img in images["train"]}
    for ann in truth_train:
        boxes_by_image[ann["image_id"]].append(ann["bbox"])
    train_ids = [img["id"] for img in images["train"]]
    made, attempts = 0, 0
    while made < wanted["spurious"] and train_ids and attempts < wanted["spurious"] * 20:
        attempts += 1
        img_id = train_ids[int(nrng.integers(0, len(train_ids)))]
        box = _spurious_box(nrng, shape_masks[img_id], boxes_by_image[img_id], imgsz)
        if box is None:
            continue
        ann_id += 1
        noisy[ann_id] = {"id": ann_id, "image_id": img_id,
                         "category_id": int(nrng.integers(1, classes + 1)),
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
        boxes_by_image[img_id].append(box)  # two spurious boxes never overlap much either
        errors.append({"image_id": img_id, "kind": "spurious", "annotation_id": ann_id,
                       "bbox": box, "category_id": noisy[ann_id]["category_id"]})
        made += 1

    errors.sort(key=lambda e: (e["annotation_id"], e["kind"]))
    realised_counts = {k: sum(e["kind"] == k for e in errors) for k in KINDS}
    denom = max(n_truth, 1)
    report = {
        "seed": seed,
        "truth_boxes": n_truth,
        "requested": {"noise": noise, "split": split, "counts": wanted,
                      "systematic": systematic or None},
        "systematic": {k: sum(e.get("systematic") == k for e in errors)
                       for k in ("confusion", "vendor")},
        "realised": {
            "noise": len(errors) / denom,
            "counts": realised_counts,
            "rates": {k: realised_counts[k] / denom for k in KINDS},
        },
        "images_with_errors": len({e["image_id"] for e in errors}),
        "errors": errors,
    }

    ann_dir = root / "annotations"
    _dump(ann_dir / "train.json", _coco(images["train"], list(noisy.values()), categories))
    _dump(ann_dir / "train_truth.json", _coco(images["train"], truth_train, categories))
    _dump(ann_dir / "val.json", _coco(images["val"], truth["val"], categories))
    _dump(ann_dir / "pool.json", _coco(images["pool"], [], categories))
    _dump(ann_dir / "pool_truth.json", _coco(images["pool"], truth["pool"], categories))
    _dump(root / "noise_report.json", report)
    if tail:
        _dump(root / "conditions.json", {"tail": tail, "images": {
            str(k): v for k, v in sorted(conditions.items())}})
    written = ["train", "train_truth", "val", "pool", "pool_truth"]
    drift_counts: dict[str, int] = {}
    if drift:
        _dump(ann_dir / "val_drifted.json",
              _coco(images["val_drifted"], truth["val_drifted"], categories))
        written.append("val_drifted")
        drift_counts = {name: sum(img["id"] in drifted for img in images[name])
                        for name in DRIFTED_SPLITS}
        _dump(root / "drift_report.json", {
            "spec": drift, "share": drift["share"],
            "images": {str(k): v for k, v in sorted(drifted.items())},
            "counts": drift_counts})

    from hitl_plugin.dataset.coco import read_coco

    for name in written:
        read_coco(ann_dir / f"{name}.json")

    summary = {
        "out": str(root),
        "images": {name: len(images[name]) for name, _ in splits},
        "annotations": {"train": len(noisy), "train_truth": n_truth,
                        "val": len(truth["val"]), "pool_truth": len(truth["pool"]),
                        **({"val_drifted": len(truth["val_drifted"])} if drift else {})},
        "classes": [c["name"] for c in categories],
        "objects_per_class": _objects_per_class(truth, categories),
        "conditions": {c: sum(v == c for v in conditions.values()) for c in CONDITIONS}
        if tail else None,
        "noise": {"requested": noise, "realised": round(report["realised"]["noise"], 4),
                  "counts": realised_counts},
        "drift": {"kinds": drift["kinds"], "share": drift["share"],
                  "pool_drifted": drift_counts["pool"],
                  "val_drifted": drift_counts["val_drifted"]} if drift else None,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("synth: wrote %s", summary)
    return summary


def main(argv: list[str] | None = None, prog: str = "hitl synth") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--classes", type=int, default=4, help=f"1..{len(SHAPES)}")
    parser.add_argument("--imgsz", type=int, default=128, help="image side in pixels")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="fraction of train truth boxes given an injected error")
    parser.add_argument("--noise-split", default=None,
                        help="e.g. missing=0.25,spurious=0.25,class_swap=0.25,bad_box=0.25")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--class-mix", default=None,
                        help="relative weight per class, e.g. 0.38,0.25,0.18,0.14,0.05")
    parser.add_argument("--tail", default=None,
                        help="share of images per rare condition, e.g. "
                        "small=0.08,occluded=0.08,background=0.06")
    parser.add_argument("--systematic", default=None,
                        help='JSON, e.g. {"confusion": {"from": "triangle", "to": "star", '
                        '"rate": 0.4}, "vendor": {"share": 0.3, "offset": [0.25, 0.2]}}')
    parser.add_argument("--drift", default=None, metavar="KINDS",
                        help="draw the pool and a val_drifted split in a drifted world: "
                        f"comma-separated kinds of {','.join(DRIFT_KINDS)}")
    parser.add_argument("--drift-share", type=float, default=None,
                        help="share of the drifted world's images that get the kinds "
                        "(default 1.0)")
    parser.add_argument("--drift-class-mix", default=None, metavar="W1,W2,...",
                        help="relative weight per class for the class_mix drift "
                        f"(default: the last class {DRIFT_SKEWED_SHARE * 100:.0f}%%)")
    parser.add_argument("--drift-scale", default=None, metavar="LO,HI",
                        help="diameter range (fraction of the image side) for the scale "
                        f"drift (default {DRIFT_SCALE[0]},{DRIFT_SCALE[1]})")
    parser.add_argument("--drift-val", type=int, default=None, metavar="N",
                        help="images in val_drifted (default: as many as --val)")
    args = parser.parse_args(argv)
    if not args.drift:
        given = [flag for flag, value in (
            ("--drift-share", args.drift_share), ("--drift-class-mix", args.drift_class_mix),
            ("--drift-scale", args.drift_scale), ("--drift-val", args.drift_val))
            if value is not None]
        if given:
            parser.error(f"{', '.join(given)} need(s) --drift KINDS")
    try:
        class_mix = ([float(v) for v in args.class_mix.split(",")] if args.class_mix
                     else None)
        tail = ({k.strip(): float(v) for k, v in (item.split("=", 1) for item in
                 args.tail.split(",") if item.strip())} if args.tail else None)
        systematic = json.loads(args.systematic) if args.systematic else None
        drift = None
        if args.drift:
            drift = {"kinds": [k.strip() for k in args.drift.split(",") if k.strip()]}
            if args.drift_share is not None:
                drift["share"] = args.drift_share
            if args.drift_class_mix:
                drift["class_mix"] = [float(v) for v in args.drift_class_mix.split(",")]
            if args.drift_scale:
                drift["scale"] = [float(v) for v in args.drift_scale.split(",")]
        summary = generate(args.out, train=args.train, val=args.val, pool=args.pool,
                           classes=args.classes, imgsz=args.imgsz, noise=args.noise,
                           noise_split=args.noise_split, seed=args.seed, class_mix=class_mix,
                           tail=tail, systematic=systematic, drift=drift,
                           drift_val=args.drift_val)
    except (ValueError, json.JSONDecodeError) as exc:
        parser.error(str(exc))
    print(json.dumps(summary, indent=1))
    return 0
