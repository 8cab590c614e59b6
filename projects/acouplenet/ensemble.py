"""A model ensemble: the detections of several separately trained models on one image, fused into one set.

The paper's Table II sets CoupleNet, whose two branches are trained together and coupled inside one
network, against such an ensemble (R-FCN with its global FCN or with Faster R-CNN: under a point of
mAP). ``tools/fuse_results.py`` fuses the predictions that ``tools/test.py --out`` writes and evaluates them.

Two ways of fusing:

- ``'wbf'``: mmdet's weighted boxes fusion (Solovyev et al., 2021): boxes of one class that overlap by
  more than ``iou_thr`` form a cluster, replaced by their score-weighted mean box; its score is the mean
  of the cluster's weighted scores (``conf_type='avg'``) times min(models, boxes in the cluster) over the
  weights' sum, so that a box one of two equally weighted models found alone keeps half its score.
- ``'nms'``: the union of the models' detections, each score times its model's weight, and class-wise NMS.
"""
from typing import Dict, Optional, Sequence

import torch
from mmcv.ops import batched_nms
from torch import Tensor

from mmdet.models.utils import weighted_boxes_fusion

FUSION_METHODS = ('wbf', 'nms')
WBF_CONF_TYPES = ('avg', 'max', 'box_and_model_avg', 'absent_model_aware_avg')


def fuse_detections(detections: Sequence[Dict[str, Tensor]], method: str = 'wbf',
                    weights: Optional[Sequence[float]] = None, iou_thr: float = 0.55, max_per_img: int = 100,
                    conf_type: str = 'avg') -> Dict[str, Tensor]:
    """Fuse one image's detections of several models.

    Args:
        detections: One dict per model: ``bboxes`` (N_i, 4) as x1, y1, x2, y2 in
            pixels, ``scores`` (N_i,) and ``labels`` (N_i,).
        method: ``'wbf'`` or ``'nms'`` (see the module's docstring).
        weights: One per model (default: 1 each).
        iou_thr: The overlap above which two boxes of one class are the same
            object.
        max_per_img: The most detections kept, by score.
        conf_type: How ``'wbf'`` scores a cluster (mmdet's choices,
            ``WBF_CONF_TYPES``).

    Returns:
        dict: ``bboxes`` (M, 4) float32, ``scores`` (M,) float32 and ``labels``
        (M,) int64, by descending score, M <= ``max_per_img``.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f'method={method!r}: choose one of {FUSION_METHODS}')
    if conf_type not in WBF_CONF_TYPES:  # (mmdet's function would print and exit)
        raise ValueError(f'conf_type={conf_type!r}: choose one of {WBF_CONF_TYPES}')
    weights = [1.0] * len(detections) if weights is None else [float(w) for w in weights]
    if len(weights) != len(detections):  # (mmdet's function would warn and weigh them alike)
        raise ValueError(f'{len(weights)} weights for {len(detections)} models: give one per model')
    bboxes = [torch.as_tensor(d['bboxes'], dtype=torch.float32).reshape(-1, 4) for d in detections]
    scores = [torch.as_tensor(d['scores'], dtype=torch.float32).reshape(-1) for d in detections]
    labels = [torch.as_tensor(d['labels'], dtype=torch.int64).reshape(-1) for d in detections]
    if method == 'wbf':
        # A box of no area can match nothing: mmdet's function drops it with a warning per box.
        kept = [(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) for b in bboxes]
        fused_boxes, fused_scores, fused_labels = weighted_boxes_fusion(
            [b[k].tolist() for b, k in zip(bboxes, kept)], [s[k].tolist() for s, k in zip(scores, kept)],
            [c[k].tolist() for c, k in zip(labels, kept)], weights=weights, iou_thr=iou_thr, conf_type=conf_type)
        fused = dict(bboxes=fused_boxes.reshape(-1, 4), scores=fused_scores.reshape(-1),
                     labels=fused_labels.reshape(-1).long())  # (sorted by score already)
    else:
        all_boxes, all_labels = torch.cat(bboxes), torch.cat(labels)
        all_scores = torch.cat([s * w for s, w in zip(scores, weights)])
        if len(all_boxes):
            dets, keep = batched_nms(all_boxes, all_scores, all_labels, dict(type='nms', iou_threshold=iou_thr))
            fused = dict(bboxes=dets[:, :4], scores=dets[:, 4], labels=all_labels[keep])
        else:
            fused = dict(bboxes=all_boxes, scores=all_scores, labels=all_labels)
    return {k: v[:max_per_img].contiguous() for k, v in fused.items()}
