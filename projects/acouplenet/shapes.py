"""A generated detection dataset where the paper's ideas matter ("shapes").

Six categories, each a body outline (ellipse, star, triangle) combined with a
layout of inner parts ("face": two eyes over a mouth; "cross": a plus with
four corner studs). Neither the outline nor the parts alone give the class:
the background holds *distractors* of both kinds, plain bodies without parts
and loose parts inside shapeless blobs, over textured, cluttered backgrounds.
Objects occlude each other (later ones are drawn over earlier ones; masks are
the visible part) and are truncated at the image borders; sizes span COCO's
small, medium and large ranges; some images hold no object.

Output: COCO-format ``annotations/instances_{split}.json`` (RLE masks of the
visible part, tight boxes of those masks), JPEG images under ``{split}/``,
and ``manifest.json``. Per annotation, ``visible_fraction`` is the visible
share of the object's whole shape (below 1 when occluded or truncated) and
``truncated`` tells whether the shape crosses the image border.

Every image is drawn from its own seed ``(seed, split, index)``, so a dataset
is a pure function of its options. The dataset is written to a temporary
folder and renamed into place: a half-written dataset never looks whole.
"""
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from .datasets import rle_from_bitmap
from .fileio import check_output_folder, sha256sum

OUTLINES = ('ellipse', 'star', 'triangle')
LAYOUTS = ('face', 'cross')
CLASSES = tuple(f'{layout}-{outline}' for layout in LAYOUTS for outline in OUTLINES)
MANIFEST = 'manifest.json'
FORMAT = 'acouplenet-shapes-v2'
SPLITS = ('train', 'val')


@dataclass
class ShapesConfig:
    """Options of the generated dataset (sizes and difficulty).

    Attributes:
        num_train / num_val: Images per split.
        image_size: (height, width) of every image.
        max_objects: Most objects per image (uniform in 1..max_objects).
        empty_fraction: Share of images without any object.
        min_size / max_size: Object side range in pixels (log-uniform).
        occlusion: Probability that an object is placed over an earlier one.
        truncation: Probability that an object is centred near a border.
        distractors: Mean number of distractors (plain bodies, loose parts)
            per image.
        clutter: Mean number of background strokes per image.
        min_visible: Objects with a smaller visible share of their shape are
            left unannotated (they are hardly recognisable).
        jpeg_quality: JPEG quality of the images.
        seed: Base seed.
    """
    num_train: int = 1200
    num_val: int = 200
    image_size: Tuple[int, int] = (256, 256)
    max_objects: int = 7
    empty_fraction: float = 0.05
    min_size: int = 16
    max_size: int = 144
    occlusion: float = 0.45
    truncation: float = 0.3
    distractors: float = 3.0
    clutter: float = 10.0
    min_visible: float = 0.25
    jpeg_quality: int = 92
    seed: int = 0

    def validate(self) -> None:
        h, w = self.image_size
        checks = [
            (self.num_train >= 0 and self.num_val >= 0, 'num_train and num_val must be >= 0'),
            (h >= 32 and w >= 32, 'image_size must be at least 32 x 32'),
            (self.max_objects >= 1, 'max_objects must be >= 1'),
            (0 <= self.empty_fraction <= 1, 'empty_fraction must be in [0, 1]'),
            (4 <= self.min_size <= self.max_size, 'need 4 <= min_size <= max_size'),
            # (larger, every object would overflow the image and all would be annotated as the whole image)
            (self.min_size <= min(h, w), f'min_size {self.min_size} does not fit a {h} x {w} image: keep it at '
                                         f'most the shorter side, {min(h, w)}'),
            (0 <= self.occlusion <= 1 and 0 <= self.truncation <= 1, 'occlusion and truncation must be in [0, 1]'),
            (self.distractors >= 0 and self.clutter >= 0, 'distractors and clutter must be >= 0'),
            (0 <= self.min_visible < 1, 'min_visible must be in [0, 1)'),
            (1 <= self.jpeg_quality <= 100, 'jpeg_quality must be in [1, 100]'),
            # (numpy's seed sequence takes no negative entropy, and its own error names no option)
            (self.seed >= 0, f'seed must be >= 0, got {self.seed}'),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f'ShapesConfig: {message}')


@dataclass
class _Object:
    label: int
    cx: float
    cy: float
    width: float
    height: float
    angle: float
    body_color: Tuple[int, int, int]
    part_color: Tuple[int, int, int]
    full_mask: np.ndarray = field(repr=False, default=None)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _color(rng, dark: Optional[bool] = None) -> Tuple[int, int, int]:
    if dark is None:
        return tuple(int(v) for v in rng.integers(0, 256, 3))
    lo, hi = (0, 110) if dark else (150, 256)
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _rotate(points: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0] - cx, points[:, 1] - cy
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _outline_polygon(outline: str, cx, cy, w, h, angle) -> np.ndarray:
    """Corner points of the body outline in image coordinates, (P, 2)."""
    if outline == 'ellipse':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([cx + 0.5 * w * np.cos(t), cy + 0.5 * h * np.sin(t)], axis=1)
    elif outline == 'star':  # five points, inner radius half the outer one
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.25)
        pts = np.stack([cx + r * w * np.cos(t), cy + r * h * np.sin(t) * 1.05], axis=1)
    else:  # triangle, apex up
        pts = np.array([[cx, cy - h / 2], [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]])
    return _rotate(pts, cx, cy, angle)


def _fill(canvas: np.ndarray, pts: np.ndarray, color) -> None:
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], color, lineType=cv2.LINE_AA, shift=4)


def _draw_parts(canvas: np.ndarray, layout: str, cx, cy, w, h, angle, color, outline: str) -> None:
    """Inner parts at fixed positions relative to the body (position-sensitive cues)."""
    # Triangles are narrower at the top: pull the parts towards the bottom centre; stars keep them in
    # their middle.
    sx, sy, oy = {'triangle': (0.6, 0.6, 0.15), 'star': (0.75, 0.75, 0.05)}.get(outline, (1.0, 1.0, 0.0))

    def at(u, v):  # u, v in [-0.5, 0.5] of the body frame
        return _rotate(np.array([[cx + u * w * sx, cy + (v * sy + oy) * h]]), cx, cy, angle)[0]

    unit = max(min(w, h), 4.0)
    if layout == 'face':
        r = max(unit * 0.12, 1.5)
        for u in (-0.2, 0.2):
            x, y = at(u, -0.15)
            cv2.circle(canvas, (int(round(x * 16)), int(round(y * 16))), int(round(r * 16)), color, -1,
                       lineType=cv2.LINE_AA, shift=4)
        a, b = at(-0.22, 0.2), at(0.22, 0.2)
        cv2.line(canvas, tuple(np.round(a * 16).astype(int)), tuple(np.round(b * 16).astype(int)), color,
                 max(int(round(unit * 0.1)), 1), lineType=cv2.LINE_AA, shift=4)
    else:  # cross with four studs
        thick = max(int(round(unit * 0.11)), 1)
        for (u0, v0), (u1, v1) in (((-0.2, 0.0), (0.2, 0.0)), ((0.0, -0.2), (0.0, 0.2))):
            a, b = at(u0, v0), at(u1, v1)
            cv2.line(canvas, tuple(np.round(a * 16).astype(int)), tuple(np.round(b * 16).astype(int)), color, thick,
                     lineType=cv2.LINE_AA, shift=4)
        half = max(unit * 0.06, 1.0)
        for u, v in ((-0.28, -0.28), (0.28, -0.28), (-0.28, 0.28), (0.28, 0.28)):
            x, y = at(u, v)
            sq = _rotate(np.array([[x - half, y - half], [x + half, y - half], [x + half, y + half],
                                   [x - half, y + half]]), x, y, angle)
            _fill(canvas, sq, color)


def _background(rng, h: int, w: int, clutter: float) -> np.ndarray:
    """Smooth colour field + noise texture + random strokes and outlines."""
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(corners, (w, h), interpolation=cv2.INTER_LINEAR)
    coarse = rng.normal(0, 28, (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.poisson(clutter)):
        kind = rng.integers(3)
        color = _color(rng)
        if kind == 0:
            p = rng.uniform(0, [w, h, w, h])
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, int(rng.integers(1, 4)),
                     lineType=cv2.LINE_AA)
        elif kind == 1:
            c = rng.uniform(0, [w, h])
            cv2.circle(img, (int(c[0]), int(c[1])), int(rng.integers(4, max(min(h, w) // 5, 5))), color,
                       int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
        else:
            pts = rng.uniform(0, [w, h], (int(rng.integers(3, 6)), 2))
            cv2.polylines(img, [pts.astype(np.int32)], True, color, 1, lineType=cv2.LINE_AA)
    return img


def _blob(rng, cx, cy, size) -> np.ndarray:
    """An irregular closed polygon: a shape that is none of the outlines."""
    n = int(rng.integers(7, 12))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = 0.5 * size * rng.uniform(0.55, 1.0, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _log_uniform(rng, lo, hi) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_distractors(rng, img: np.ndarray, cfg: ShapesConfig) -> None:
    h, w = img.shape[:2]
    for _ in range(rng.poisson(cfg.distractors)):
        size = _log_uniform(rng, cfg.min_size, cfg.max_size * 0.7)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(-0.35, 0.35)
        if rng.random() < 0.5:
            # A plain body: an object outline without its parts.
            outline = OUTLINES[rng.integers(len(OUTLINES))]
            _fill(img, _outline_polygon(outline, cx, cy, size, size * rng.uniform(0.75, 1.3), angle),
                  _color(rng, dark=bool(rng.random() < 0.5)))
        else:
            # Loose parts of a random layout inside a shapeless blob.
            body = _color(rng, dark=bool(rng.random() < 0.5))
            _fill(img, _blob(rng, cx, cy, size), body)
            _draw_parts(img, LAYOUTS[rng.integers(len(LAYOUTS))], cx, cy, size, size, angle,
                        _color(rng, dark=sum(body) > 380), 'ellipse')


def _place(rng, objects: List[_Object], size: float, h: int, w: int, cfg: ShapesConfig) -> Tuple[float, float]:
    if objects and rng.random() < cfg.occlusion:
        other = objects[rng.integers(len(objects))]
        d = 0.5 * (size + max(other.width, other.height)) * rng.uniform(0.25, 0.7)
        t = rng.uniform(0, 2 * np.pi)
        return other.cx + d * math.cos(t), other.cy + d * math.sin(t)
    if rng.random() < cfg.truncation:
        side = rng.integers(4)
        off = size * rng.uniform(-0.1, 0.35)
        along = rng.uniform(0, w if side < 2 else h)
        return [(along, -off), (along, h + off), (-off, along), (w + off, along)][side]
    margin = min(size / 2, min(h, w) / 2 - 1)
    return rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)


def render_image(cfg: ShapesConfig, split: str, index: int) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image: (H, W, 3) BGR uint8 and its annotations (visible masks)."""
    rng = _rng(cfg.seed, split, index)
    h, w = cfg.image_size
    img = _background(rng, h, w, cfg.clutter)
    _draw_distractors(rng, img, cfg)
    owner = np.full((h, w), -1, dtype=np.int32)  # which object each pixel shows
    objects: List[_Object] = []
    num = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))
    for _ in range(num):
        label = int(rng.integers(len(CLASSES)))
        size = _log_uniform(rng, cfg.min_size, cfg.max_size)
        aspect = rng.uniform(0.75, 1.33)
        obj = _Object(label=label, cx=0.0, cy=0.0, width=size * math.sqrt(aspect), height=size / math.sqrt(aspect),
                      angle=float(rng.uniform(-0.3, 0.3)), body_color=(0, 0, 0), part_color=(0, 0, 0))
        obj.cx, obj.cy = _place(rng, objects, size, h, w, cfg)
        dark_body = bool(rng.random() < 0.5)
        obj.body_color, obj.part_color = _color(rng, dark_body), _color(rng, not dark_body)
        layout, outline = CLASSES[label].split('-')
        polygon = _outline_polygon(outline, obj.cx, obj.cy, obj.width, obj.height, obj.angle)
        # The whole shape on a canvas large enough to hold what lies outside the image.
        pad = int(math.ceil(max(obj.width, obj.height)))
        full = np.zeros((h + 2 * pad, w + 2 * pad), np.uint8)
        cv2.fillPoly(full, [np.round((polygon + pad) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        obj.full_mask = full
        inside = full[pad:pad + h, pad:pad + w].astype(bool)
        _fill(img, polygon, obj.body_color)
        _draw_parts(img, layout, obj.cx, obj.cy, obj.width, obj.height, obj.angle, obj.part_color, outline)
        owner[inside] = len(objects)
        objects.append(obj)

    annotations = []
    for k, obj in enumerate(objects):
        visible = owner == k
        full_area = int(obj.full_mask.sum())
        area = int(visible.sum())
        if full_area == 0 or area == 0 or area / full_area < cfg.min_visible:
            continue
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        pad = (obj.full_mask.shape[0] - h) // 2
        annotations.append(dict(
            category_id=obj.label + 1,
            bbox=[x0, y0, x1 - x0, y1 - y0],
            area=area,
            segmentation=rle_from_bitmap(visible),
            iscrowd=0,
            visible_fraction=round(area / full_area, 4),
            truncated=bool(obj.full_mask[pad:pad + h, pad:pad + w].sum() < full_area),
        ))
    return img, annotations


def _write_split(cfg: ShapesConfig, split: str, num: int, root: str) -> Dict[str, int]:
    os.makedirs(os.path.join(root, split), exist_ok=True)
    images, annotations = [], []
    h, w = cfg.image_size
    for index in range(num):
        img, anns = render_image(cfg, split, index)
        file_name = f'{index:06d}.jpg'
        if not cv2.imwrite(os.path.join(root, split, file_name), img,
                           [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]):
            raise OSError(f'could not write {os.path.join(root, split, file_name)}')
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
        for ann in anns:
            ann.update(id=len(annotations) + 1, image_id=image_id)
            annotations.append(ann)
    coco = dict(info=dict(description=f'{FORMAT} {split}', version='1'), licenses=[],
                categories=[dict(id=i + 1, name=name, supercategory=name.split('-')[0])
                            for i, name in enumerate(CLASSES)],
                images=images, annotations=annotations)
    with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    return dict(images=len(images), annotations=len(annotations))


def is_complete(root: str, cfg: Optional[ShapesConfig] = None) -> bool:
    """Whether ``root`` holds a whole dataset (made with ``cfg``, when given)."""
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get('format') != FORMAT:
        return False
    if cfg is not None and manifest.get('config') != json.loads(json.dumps(asdict(cfg))):
        return False
    return all(os.path.isfile(os.path.join(root, 'annotations', f'instances_{s}.json')) for s in SPLITS)


def fingerprint(root: str) -> str:
    """sha256 over a dataset folder: each file's relative path and bytes, in sorted order.

    Reports carry it so that two runs can be told to have trained and
    evaluated on the same data, whichever machine generated it.
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()  # os.walk descends in this order
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode() + b'\0' + bytes.fromhex(sha256sum(path)))
    return digest.hexdigest()


def generate(root: str, cfg: ShapesConfig = ShapesConfig(), overwrite: bool = False) -> dict:
    """Write the dataset to ``root`` atomically; returns the manifest.

    Raises:
        FileExistsError: ``root`` exists and ``overwrite`` is False, or it
            holds something other than a generated dataset (``overwrite``
            replaces only a dataset with its manifest, or an empty folder).
        ValueError: A file is in the way of ``root`` (or of a folder above
            it), or the folder cannot be written.
    """
    cfg.validate()
    root = os.path.abspath(root)
    if os.path.exists(root) and not overwrite:
        raise FileExistsError(f'{root} already exists; pass overwrite=True (--overwrite) to replace it')
    if os.path.exists(root) and not os.path.isfile(os.path.join(root, MANIFEST)) and \
            not (os.path.isdir(root) and not os.listdir(root)):
        raise FileExistsError(f'{root} holds something other than a generated dataset (no {MANIFEST}); refusing to '
                              f'replace it: move it away or choose another folder')
    check_output_folder(root, 'dataset folder')
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.partial-', dir=parent)
    try:
        os.makedirs(os.path.join(tmp, 'annotations'))
        counts = {split: _write_split(cfg, split, num, tmp)
                  for split, num in (('train', cfg.num_train), ('val', cfg.num_val))}
        manifest = dict(format=FORMAT, classes=list(CLASSES), config=json.loads(json.dumps(asdict(cfg))),
                        splits=counts)
        with open(os.path.join(tmp, MANIFEST), 'w') as f:  # written last: its presence marks completion
            json.dump(manifest, f, indent=2)
        if os.path.exists(root):
            old = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.old-', dir=parent)
            os.replace(root, os.path.join(old, 'data'))
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
