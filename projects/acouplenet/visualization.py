"""Detections and attention maps side by side (the paper's Fig. 5)."""
import io
import json
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.dataset import Compose, pseudo_collate
from torch import Tensor

from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg

from .attention_backbone import capture_attention
from .attention_loss import stride_name
from .fileio import atomic_write

# The width of each panel of attention_figure, and the height its titles take.
PANEL_INCHES = 3.2
TITLE_INCHES = 0.3
# Padding (points) of the coloured box around a detection label's text.
LABEL_PAD = 0.5


def _load_bgr(image: Union[str, np.ndarray]) -> np.ndarray:
    import mmcv
    if isinstance(image, str):
        img = mmcv.imread(image, channel_order='bgr')
        if img is None:
            raise ValueError(f'cannot read image {image!r}: missing, corrupt or not an image')
        return img
    return image


@torch.no_grad()
def predict_with_attention(model, image: Union[str, np.ndarray]) -> Tuple[DetDataSample, List[Tensor]]:
    """Detections of one image and the attention maps the backbone gated it with.

    Args:
        model: A detector from ``mmdet.apis.init_detector`` (eval mode).
        image: Path or (H, W, 3) BGR array.

    Returns:
        tuple: The ``DetDataSample`` (boxes in original image pixels) and one
        ``(stride, map)`` per attention block, shallowest first, the map (h, w)
        in [0, 1] and cropped to the image (empty for a model without attention).
    """
    pipeline_cfg = get_test_pipeline_cfg(model.cfg).copy()
    img = _load_bgr(image)
    pipeline_cfg[0] = dict(type='mmdet.LoadImageFromNDArray')
    # Ground-truth loading has nothing to read for a bare image.
    pipeline_cfg = [t for t in pipeline_cfg if 'LoadAnnotations' not in t['type']]
    data = Compose(pipeline_cfg)(dict(img=img, img_id=0, img_path=image if isinstance(image, str) else None))
    data = model.data_preprocessor(pseudo_collate([data]), training=False)
    with capture_attention(model.backbone) as maps:
        result = model.predict(data['inputs'], data['data_samples'], rescale=True)[0]
    # Crop the batch padding and keep the part that covers the resized image.
    h, w = result.metainfo['img_shape'][:2]
    pad_h, pad_w = data['inputs'].shape[-2:]
    cropped = []
    for m in maps:
        mh, mw = m.shape[-2:]
        crop = m[0, 0, :max(1, round(mh * h / pad_h)), :max(1, round(mw * w / pad_w))].cpu()
        cropped.append((int(stride_name(pad_h, mh)[1:]), crop))
    return result, cropped


def attention_in_boxes(amap: Tensor, boxes: np.ndarray, ori_shape: Tuple[int, int]) -> Tuple[np.ndarray, float]:
    """Attention inside each box and on the background of one map.

    Args:
        amap: (h, w) attention map in [0, 1] covering the whole image.
        boxes: (N, 4) boxes (x1, y1, x2, y2) in original image pixels.
        ori_shape: (H, W) of the original image, to map boxes onto the map.

    Returns:
        tuple: (N, 3) array of (value at the box centre, maximum, mean) over the
        map cells the box touches (NaN where a box touches none), and the mean
        over the cells no box touches (NaN if there are none).
    """
    m = amap.numpy() if isinstance(amap, Tensor) else np.asarray(amap)
    h, w = m.shape
    sy, sx = h / ori_shape[0], w / ori_shape[1]
    background = np.ones((h, w), dtype=bool)
    stats = np.full((len(boxes), 3), np.nan)
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        # Cells the box overlaps, at least one per side, clipped to the map.
        c0, r0 = int(np.floor(x1 * sx)), int(np.floor(y1 * sy))
        c1, r1 = max(int(np.ceil(x2 * sx)), c0 + 1), max(int(np.ceil(y2 * sy)), r0 + 1)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        background[r0:r1, c0:c1] = False
        region = m[r0:r1, c0:c1]
        cy = min(max(int((y1 + y2) / 2 * sy), 0), h - 1)
        cx = min(max(int((x1 + x2) / 2 * sx), 0), w - 1)
        stats[i] = (m[cy, cx], region.max(), region.mean())
    return stats, float(m[background].mean()) if background.any() else float('nan')


def attention_by_object_size(model, ann_file: str, img_dir: str,
                             max_images: Optional[int] = None) -> List[dict]:
    """Mean attention on ground-truth objects (by COCO size) and on the background, per block.

    Shows what the gating does to each kind of region: a map near 0 on
    small objects or on the context around them removes their features
    from everything after that stage.

    Args:
        model: A detector from ``mmdet.apis.init_detector`` (eval mode).
        ann_file: COCO-format annotation json.
        img_dir: Folder the json's ``file_name`` entries are relative to.
        max_images: Only the first images of the json, in its order.

    Returns:
        list[dict]: One row per (stride, region), region in ``small``, ``medium``,
        ``large`` (COCO areas < 32², < 96², else) and ``background``, with
        ``n`` (objects or images) and the means of ``centre``, ``max`` and
        ``mean`` attention (equal for background).
    """
    with open(ann_file) as f:
        coco = json.load(f)
    anns_by_image = {}
    for ann in coco.get('annotations', []):
        if not ann.get('iscrowd', 0):
            anns_by_image.setdefault(ann['image_id'], []).append(ann)
    collected = {}
    for info in coco['images'][:max_images]:
        anns = anns_by_image.get(info['id'], [])
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (a['bbox'] for a in anns)]).reshape(-1, 4)
        sizes = ['small' if a['area'] < 32**2 else 'medium' if a['area'] < 96**2 else 'large' for a in anns]
        result, maps = predict_with_attention(model, os.path.join(img_dir, info['file_name']))
        for stride, amap in maps:
            stats, background = attention_in_boxes(amap, boxes, result.metainfo['ori_shape'][:2])
            for size, row in zip(sizes, stats):
                if not np.isnan(row).any():
                    collected.setdefault((stride, size), []).append(row)
            if not np.isnan(background):
                collected.setdefault((stride, 'background'), []).append([background] * 3)
    order = {'small': 0, 'medium': 1, 'large': 2, 'background': 3}
    rows = []
    for (stride, region), values in sorted(collected.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        centre, peak, mean = np.mean(values, axis=0)
        rows.append(dict(stride=stride, region=region, n=len(values), centre=float(centre), max=float(peak),
                         mean=float(mean)))
    return rows


def place_labels(boxes: np.ndarray, label_sizes: np.ndarray, image_shape: Tuple[int, int]) -> np.ndarray:
    """Top-left corners for detection labels that keep clear of each other.

    Each label tries, in order: above its box's top-left corner, just inside
    it, then lower and lower inside the box, just below it; the same aligned
    with the box's right edge; then one and two label heights further above
    and below. It takes the first place that covers no label placed before
    it, or else the one that covers the least. Every place is shifted into
    the image where the label fits. Overlapping detections (one object, two
    classes) so get readable labels, the first (highest-scoring) one at its
    usual place.

    Args:
        boxes: (N, 4) ``(x1, y1, x2, y2)`` in image pixels, in placing order.
        label_sizes: (N, 2) ``(width, height)`` of each label in image pixels.
        image_shape: ``(H, W)`` of the image.

    Returns:
        np.ndarray: (N, 2) ``(x, y)`` of each label's top-left corner (y down).
    """
    height, width = image_shape
    placed = np.zeros((0, 4))  # (x1, y1, x2, y2) of the labels placed so far
    for (x1, y1, x2, y2), (w, h) in zip(np.asarray(boxes, dtype=float).reshape(-1, 4),
                                        np.asarray(label_sizes, dtype=float).reshape(-1, 2)):
        # In a third of a label's height steps: a label can stack right under one placed before.
        inside = y1 + np.arange(max(int((y2 - y1 - h) // (h / 3)) + 1, 1)) * (h / 3)
        near = np.concatenate([[y1 - h], inside, [y2]])
        far = np.array([y1 - 2 * h, y2 + h, y1 - 3 * h, y2 + 2 * h])
        # Left-aligned with the box, then right-aligned, then further above and below it.
        xs = np.concatenate([np.full_like(near, x1), np.full_like(near, x2 - w), np.full_like(far, x1)])
        xs = np.clip(xs, 0, max(width - w, 0))
        ys = np.clip(np.concatenate([near, near, far]), 0, max(height - h, 0))
        candidates = np.stack([xs, ys, xs + w, ys + h], axis=1)
        # Area each candidate shares with the labels placed before, summed.
        low = np.maximum(candidates[:, None, :2], placed[None, :, :2])
        high = np.minimum(candidates[:, None, 2:], placed[None, :, 2:])
        covered = (high - low).clip(min=0).prod(axis=2).sum(axis=1)
        free = np.flatnonzero(covered <= 0)
        placed = np.vstack([placed, candidates[free[0] if free.size else int(np.argmin(covered))]])
    return placed[:, :2]


def _place_label_texts(fig, labels: list) -> None:
    """Move the detection labels of each image to :func:`place_labels`' corners, measured as rendered.

    Args:
        labels: ``(axes, (H, W), [(box, text), ...])`` per image, its detections highest score first.
    """
    renderer = fig.canvas.get_renderer()
    for ax, shape, items in labels:
        # Image pixels per display pixel along x and y (the image's y axis points down).
        (x0, y0), (x1, y1) = ax.transData.inverted().transform([(0, 0), (1, 1)])
        scale = np.abs([x1 - x0, y1 - y0])
        # The coloured box reaches LABEL_PAD points beyond the text on every side.
        pad = LABEL_PAD * fig.dpi / 72 * scale
        sizes = np.array([text.get_window_extent(renderer).size * scale + 2 * pad for _, text in items])
        corners = place_labels(np.array([box for box, _ in items]), sizes, shape)
        for (_, text), corner in zip(items, corners):
            text.set_position(tuple(corner + pad))


def attention_figure(model, images: Sequence[Union[str, np.ndarray]], out_file: str, score_thr: float = 0.3,
                     class_names: Optional[Sequence[str]] = None, titles: Optional[Sequence[str]] = None) -> str:
    """One row per image: detections, then each attention map over the image.

    Returns:
        str: ``out_file`` (PNG).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if class_names is None:
        class_names = model.dataset_meta.get('classes') if getattr(model, 'dataset_meta', None) else None
    rows = []
    for image in images:
        result, maps = predict_with_attention(model, image)
        rows.append((_load_bgr(image)[:, :, ::-1], result, maps))
    num_maps = max((len(r[2]) for r in rows), default=0)
    cols = 1 + num_maps
    # Panels PANEL_INCHES wide; each row as tall as its image's aspect asks (within 0.3-2 widths), plus
    # its titles, so a wide image is not framed in white above and below.
    heights = [PANEL_INCHES * min(max(rgb.shape[0] / rgb.shape[1], 0.3), 2.0) + TITLE_INCHES
               for rgb, _, _ in rows]
    fig, axes = plt.subplots(len(rows), cols, figsize=(PANEL_INCHES * cols, sum(heights)), squeeze=False,
                             gridspec_kw=dict(height_ratios=heights))
    labels = []  # (axes, (H, W), [(box, text), ...]) per image, for _place_label_texts
    for r, (rgb, result, maps) in enumerate(rows):
        ax = axes[r, 0]
        ax.imshow(rgb)
        inst = result.pred_instances
        image_labels = []
        labels.append((ax, rgb.shape[:2], image_labels))
        # Highest score first: it gets the first choice of label place.
        order = inst.scores.argsort(descending=True)
        order = order[inst.scores[order] >= score_thr]
        for box, label, score in zip(inst.bboxes[order].tolist(), inst.labels[order].tolist(),
                                     inst.scores[order].tolist()):
            x1, y1, x2, y2 = box
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color='lime', linewidth=1.2))
            name = class_names[label] if class_names and label < len(class_names) else str(label)
            text = ax.text(x1, y1, f'{name} {score:.2f}', fontsize=6, color='black', va='top',
                           bbox=dict(facecolor='lime', alpha=0.7, pad=LABEL_PAD, linewidth=0))
            image_labels.append((box, text))
        ax.set_title(titles[r] if titles else f'detections (score >= {score_thr})', fontsize=8)
        for c in range(num_maps):
            ax = axes[r, 1 + c]
            if c < len(maps):
                stride, amap = maps[c]
                ax.imshow(rgb, alpha=0.35)
                ax.imshow(amap.numpy(), cmap='jet', vmin=0, vmax=1, alpha=0.65,
                          extent=(0, rgb.shape[1], rgb.shape[0], 0), interpolation='bilinear')
                ax.set_title(f'attention map, stride {stride}', fontsize=8)
        for ax in axes[r]:
            ax.axis('off')
    fig.tight_layout()
    _place_label_texts(fig, labels)
    # Rendered in memory and renamed into place: a killed run leaves no half-written picture.
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110, format=os.path.splitext(out_file)[1][1:].lower() or 'png')
    plt.close(fig)
    atomic_write(buffer.getvalue(), out_file)
    return out_file
