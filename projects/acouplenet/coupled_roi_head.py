"""RoI head feeding both CoupleNet branches.

mmdet's :class:`StandardRoIHead` pools features per RoI and hands them to the
box head. R-FCN-style heads instead compute their score maps once per image
and pool those, so :class:`CoupledRoIHead` first turns the conv5 features into
the box head's per-image maps (:meth:`CoupledBBoxHead.forward_maps`), then lets
``StandardRoIHead`` run as usual on them: assignment, sampling (OHEM
included), targets, losses and post-processing are all mmdet's.

The tuple ``StandardRoIHead`` passes around as ``x`` therefore holds
batch-first per-image tensors: ``(img_sizes, *maps)``, where ``img_sizes`` is
(N, 2) ``(height, width)`` of each image before padding (to clip context
regions) and ``maps`` follow ``bbox_head.map_names``. Being batch-first, they
survive the per-image slicing ``[t[i][None] for t in x]`` that mmdet's
``OHEMSampler`` does, so OHEM sees the right image size for every RoI.
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

from mmdet.models.roi_heads import StandardRoIHead
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.structures.bbox import bbox_flip, bbox_overlaps, get_box_tensor
from mmdet.utils import ConfigType, InstanceList

from .roi_extractors import context_rois, pool_roi_sets


@MODELS.register_module()
class CoupledRoIHead(StandardRoIHead):
    """RoI head of CoupleNet / ACoupleNet.

    Args:
        ps_roi_extractor (dict): Position-sensitive pooling of the local
            branch (:class:`PSRoIExtractor`).
        bbox_roi_extractor (dict): RoI pooling of the global branch (mmdet's
            ``SingleRoIExtractor``, e.g. with ``RoIPool`` 7 x 7).
        bbox_head (dict): :class:`CoupledBBoxHead`.
        **kwargs: ``train_cfg``, ``test_cfg``, ``init_cfg`` of
            :class:`StandardRoIHead`. Mask heads and shared heads are not
            supported.
    """

    def __init__(self, ps_roi_extractor: ConfigType, bbox_roi_extractor: ConfigType, bbox_head: ConfigType,
                 **kwargs) -> None:
        for unsupported in ('mask_head', 'mask_roi_extractor', 'shared_head'):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f'CoupledRoIHead: {unsupported} is not supported; the conv5 stage belongs '
                                 f'to the backbone (dilated, as in R-FCN) and there is no mask branch')
        super().__init__(bbox_roi_extractor=bbox_roi_extractor, bbox_head=bbox_head, **kwargs)
        self.ps_roi_extractor = MODELS.build(ps_roi_extractor)
        if not hasattr(self.bbox_head, 'forward_maps'):
            raise ValueError(f'CoupledRoIHead: bbox_head {type(self.bbox_head).__name__} has no forward_maps; '
                             f'use CoupledBBoxHead')
        self._check_extractors()
        # Each image's gt boxes and classes while the box head counts its decisions (predict sets them).
        self._count_gts: Optional[List[Tuple[Tensor, Tensor]]] = None

    def _check_extractors(self) -> None:
        """Both branches pool k x k bins of one stride-``s`` level: a mismatch would otherwise surface as a
        shape error deep in the head, or not at all (PS pooling with k=1 takes any channel count)."""
        head, k = self.bbox_head, self.bbox_head.group_size
        extractors = []
        if head.with_local:
            extractors.append(('ps_roi_extractor', self.ps_roi_extractor))
        if head.with_global:
            extractors.append(('bbox_roi_extractor', self.bbox_roi_extractor))
        for name, extractor in extractors:
            size = tuple(_pair(getattr(extractor.roi_layers[0], 'output_size', None)))
            if size != (k, k):
                raise ValueError(f'CoupledRoIHead: {name} pools {size} bins but bbox_head.group_size is {k}; set '
                                 f'its roi_layer output_size={k} (or group_size to the pooled size)')
        strides = {name: list(extractor.featmap_strides) for name, extractor in extractors}
        if len({tuple(s) for s in strides.values()}) > 1:
            raise ValueError(f'CoupledRoIHead: the extractors read conv5 at different strides {strides}; give both '
                             f'the stride of the backbone\'s conv5 (16 with a dilated conv5, as R-FCN)')

    @property
    def feature_stride(self) -> int:
        """The stride of conv5 the RoI extractors assume."""
        extractor = self.ps_roi_extractor if self.bbox_head.with_local else self.bbox_roi_extractor
        return extractor.featmap_strides[0]

    # -- per-image inputs -------------------------------------------------------------------------
    def head_inputs(self, x: Sequence[Tensor], batch_data_samples: Optional[SampleList] = None
                    ) -> Tuple[Tensor, ...]:
        """``(img_sizes, *maps)`` from the conv5 features.

        Args:
            x: ``(conv5,)``, conv5 of shape (N, C, H, W).
            batch_data_samples: Supplies each image's ``img_shape``; without
                it the whole (padded) feature extent counts as the image.

        Raises:
            ValueError: conv5 is not at the stride the RoI extractors assume
                (checked against the samples' ``batch_input_shape``).
        """
        if len(x) != 1:
            raise ValueError(f'CoupledRoIHead takes one feature level (conv5), got {len(x)}; route the '
                             f'backbone outputs with ACoupleNet(roi_feat_index=...)')
        feat = x[0]
        stride = self.feature_stride
        if batch_data_samples and 'batch_input_shape' in batch_data_samples[0].metainfo:
            self._check_stride(feat, batch_data_samples[0].metainfo['batch_input_shape'], stride)
        maps = self.bbox_head.forward_maps(feat)
        if batch_data_samples:
            img_sizes = feat.new_tensor([list(s.metainfo['img_shape'][:2]) for s in batch_data_samples])
        else:
            img_sizes = feat.new_tensor([[feat.size(2) * stride, feat.size(3) * stride]]).expand(feat.size(0), 2)
        return (img_sizes, ) + tuple(maps[name] for name in self.bbox_head.map_names)

    @staticmethod
    def _check_stride(feat: Tensor, batch_input_shape: Tuple[int, int], stride: int) -> None:
        """(N, C, H, W) conv5 must be the (padded) batch input at ``stride``, give or take a cell of
        rounding; otherwise every RoI would be pooled from the wrong place without an error."""
        expected = [math.ceil(size / stride) for size in batch_input_shape[:2]]
        if any(abs(got - want) > 1 for got, want in zip(feat.shape[-2:], expected)):
            actual = batch_input_shape[0] / feat.size(2)
            raise ValueError(f'CoupledRoIHead: conv5 is {feat.size(2)} x {feat.size(3)} for a '
                             f'{batch_input_shape[0]} x {batch_input_shape[1]} batch, stride ~{actual:g}, but the '
                             f'RoI extractors assume stride {stride} (featmap_strides); keep conv5 at stride 16 '
                             f'(backbone strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), as R-FCN) or set '
                             f'featmap_strides to the backbone\'s conv5 stride')

    def forward(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
                batch_data_samples: SampleList = None) -> tuple:
        return super().forward(self.head_inputs(x, batch_data_samples), rpn_results_list, batch_data_samples)

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList, batch_data_samples: SampleList) -> dict:
        return super().loss(self.head_inputs(x, batch_data_samples), rpn_results_list, batch_data_samples)

    def predict(self, x: Tuple[Tensor], rpn_results_list: InstanceList, batch_data_samples: SampleList,
                rescale: bool = False) -> InstanceList:
        # While the box head counts how the coupling decides, the RoIs' true classes (from the gt boxes, where
        # the test data has them) tell it whether each decision was right.
        self._count_gts = input_gts(batch_data_samples) if self.bbox_head.counting_decisions else None
        try:
            return super().predict(self.head_inputs(x, batch_data_samples), rpn_results_list, batch_data_samples,
                                   rescale=rescale)
        finally:
            self._count_gts = None

    # -- per-RoI forward --------------------------------------------------------------------------
    def _bbox_forward(self, x: Sequence[Tensor], rois: Tensor) -> dict:
        """Pool both branches for (n, 5) ``rois`` and run the box head.

        Args:
            x: ``(img_sizes, *maps)`` from :meth:`head_inputs` (or a per-image
                slice of it).
            rois: (n, 5) ``(batch_index, x1, y1, x2, y2)``.

        Returns:
            dict: ``cls_score`` (n, C+1), ``bbox_pred`` (n, R) and
            ``bbox_feats`` (the global branch's pooled features, or None).
        """
        head = self.bbox_head
        img_sizes, *map_list = x
        maps = dict(zip(head.map_names, map_list))
        ctx_rois = context_rois(rois, img_sizes, head.context_scale) if head.with_context else None
        local_bins = local_context_bins = global_feats = None
        if head.with_local:
            local_bins = self.ps_roi_extractor((maps['local'], ), rois)
            if head.local_context:
                local_context_bins = self.ps_roi_extractor((maps['local'], ), ctx_rois)
        if head.with_global:
            if head.global_context:
                # (n, 2C, k, k) proposal + context features, channels-last: the order in which the
                # head's k x k conv reads them, written there by the CPU pooling without a copy.
                global_feats = pool_roi_sets(self.bbox_roi_extractor, maps['global'], (rois, ctx_rois))
            else:
                global_feats = self.bbox_roi_extractor((maps['global'], ), rois)
        roi_labels = None if self._count_gts is None else label_rois(rois, self._count_gts, head.num_classes)
        cls_score, bbox_pred = head(local_bins, global_feats, local_context_bins, roi_labels)
        return dict(cls_score=cls_score, bbox_pred=bbox_pred, bbox_feats=global_feats)


def input_gts(batch_data_samples: SampleList) -> Optional[List[Tuple[Tensor, Tensor]]]:
    """Each test image's gt boxes, (m, 4) in the network input's coordinates, and classes, (m,).

    A test sample's gt boxes are in the original image's frame (mmdet's test
    pipelines load them after ``Resize``; VOCMetric compares them with the
    rescaled detections): scaled here by the sample's ``scale_factor`` and,
    for the flipped view of test-time augmentation, flipped as the image was.
    None where a sample has no gt boxes loaded (e.g. COCO test-dev). The
    objects the metrics ignore (VOC's difficult ones, COCO's crowds: the
    ``ignored_instances``) are not among them: a RoI on one counts as the
    background.
    """
    gts = []
    for sample in batch_data_samples:
        gt = sample.get('gt_instances')
        if gt is None or 'bboxes' not in gt or 'scale_factor' not in sample.metainfo:
            return None
        boxes = get_box_tensor(gt.bboxes)
        boxes = boxes * boxes.new_tensor(sample.metainfo['scale_factor']).repeat(2)
        if sample.metainfo.get('flip', False):
            boxes = bbox_flip(boxes, sample.metainfo['img_shape'], sample.metainfo['flip_direction'])
        gts.append((boxes, gt.labels))
    return gts


def label_rois(rois: Tensor, gts: Sequence[Tuple[Tensor, Tensor]], background: int,
               iou_thr: float = 0.5) -> Tensor:
    """The true class of each RoI: that of the gt box it overlaps most, where the IoU is at least ``iou_thr``.

    Args:
        rois: (n, 5) ``(batch_index, x1, y1, x2, y2)``.
        gts: per image, (m, 4) gt boxes in the RoIs' coordinates and their (m,) classes.
        background: the class of a RoI that overlaps no gt box enough (mmdet's C).

    Returns:
        Tensor: (n,) int64.
    """
    labels = torch.full((rois.size(0), ), background, dtype=torch.long, device=rois.device)
    for image, (boxes, classes) in enumerate(gts):
        in_image = rois[:, 0] == image
        if boxes.numel() == 0 or not bool(in_image.any()):
            continue
        best_iou, best_gt = bbox_overlaps(rois[in_image, 1:], boxes.to(rois)).max(dim=1)
        labels[in_image] = torch.where(best_iou >= iou_thr, classes.to(labels)[best_gt], background)
    return labels
