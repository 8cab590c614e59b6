"""Flip test-time augmentation (``--tta``) whose merged result carries the gt as the test pipeline loads it.

The paper tests single-scale and unflipped (Sec. IV-A): TTA is a user's option, not part of the method.
"""
from typing import List, Optional

from mmengine.config import ConfigDict
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample


@MODELS.register_module()
class UnflippedViewTTAModel(DetTTAModel):
    """mmdet's ``DetTTAModel`` (each view's detections mapped back to the
    original image and merged by class-wise NMS) that hands the merged
    detections to the unflipped view's sample, not to the first view's.

    Why: a test pipeline loads the gt boxes after ``Resize``, in the original
    image's frame, where VOCMetric compares them with the rescaled detections
    and ``--show-dir`` draws them. The flip TTA that mmdet's ``tools/test.py``
    builds for a config without a ``tta_pipeline`` (``mim test --tta``) flips
    the first view, gt boxes included, about the resized image's width, and
    ``DetTTAModel`` returns that view's sample: its gt boxes are neither in the
    original frame nor in the flipped one. The unflipped view's are as loaded.

    Args:
        tta_cfg (dict, optional): ``nms`` (the merge's NMS config) and
            ``max_per_img``. Defaults to mmdet's test.py default: NMS at IoU
            0.5, 100 detections kept.
    """

    def __init__(self, tta_cfg: Optional[dict] = None, **kwargs) -> None:
        if tta_cfg is None:
            tta_cfg = dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
        # (mmdet reads it by attribute, tta_cfg.nms, as a config gives it; a plain dict would not do.)
        super().__init__(tta_cfg=ConfigDict(tta_cfg), **kwargs)

    def _merge_single_sample(self, data_samples: List[DetDataSample]) -> DetDataSample:
        """One image's views (each with ``pred_instances`` and a ``flip`` meta
        key) -> the unflipped view's sample (the first view's where every view
        is flipped) with the merged ``pred_instances``."""
        unflipped = next((i for i, sample in enumerate(data_samples) if not sample.metainfo.get('flip', False)), 0)
        # mmdet's merge returns its list's first sample (the order of the views only breaks NMS ties).
        views = [data_samples[unflipped]] + [s for i, s in enumerate(data_samples) if i != unflipped]
        return super()._merge_single_sample(views)
