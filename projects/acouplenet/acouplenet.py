"""The ACoupleNet detector: cascade attention backbone, RPN on conv4, coupled
local/global heads on a dilated conv5, all at stride 16 (as R-FCN).
"""
import copy
from typing import Dict, List, Tuple

import torch
from torch import Tensor

from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptMultiConfig

from .attention_backbone import AttentionMixin


@MODELS.register_module()
class ACoupleNet(TwoStageDetector):
    """Attention CoupleNet (and CoupleNet / R-FCN, by configuration).

    The backbone returns several levels (conv4 and conv5 for a ResNet with
    ``out_indices=(2, 3)``): the RPN reads ``rpn_feat_index`` and the RoI
    head ``roi_feat_index``. With an :func:`AttentionBackbone` the attention
    losses (``loss_att_s4``, ...) join the loss dict; without attention
    stages the model is CoupleNet.

    Args:
        backbone, rpn_head, roi_head, train_cfg, test_cfg, neck,
            data_preprocessor, init_cfg: As :class:`TwoStageDetector`.
        loss_attention (dict): :class:`AttentionLoss` config.
        rpn_feat_index (int): Backbone (or neck) output the RPN reads.
        roi_feat_index (int): Backbone (or neck) output the RoI head reads.
    """

    def __init__(self,
                 backbone: ConfigType,
                 rpn_head: ConfigType,
                 roi_head: ConfigType,
                 train_cfg: ConfigType,
                 test_cfg: ConfigType,
                 neck: OptConfigType = None,
                 loss_attention: ConfigType = dict(type='AttentionLoss', loss_weight=1.0),
                 rpn_feat_index: int = 0,
                 roi_feat_index: int = -1,
                 data_preprocessor: OptConfigType = None,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(backbone=backbone, neck=neck, rpn_head=rpn_head, roi_head=roi_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.loss_attention = MODELS.build(loss_attention)
        self.rpn_feat_index = rpn_feat_index
        self.roi_feat_index = roi_feat_index

    @property
    def with_attention(self) -> bool:
        return isinstance(self.backbone, AttentionMixin) and self.backbone.with_attention

    def extract_feat_and_attention(self, batch_inputs: Tensor) -> Tuple[Tuple[Tensor, ...], List[Tensor]]:
        """(N, 3, H, W) images -> (feature levels, attention logit maps)."""
        if isinstance(self.backbone, AttentionMixin):
            feats, attention_logits = self.backbone.forward_with_attention(batch_inputs)
        else:
            feats, attention_logits = self.backbone(batch_inputs), []
        if self.with_neck:
            feats = self.neck(feats)
        return tuple(feats), attention_logits

    def extract_feat(self, batch_inputs: Tensor) -> Tuple[Tensor, ...]:
        """(N, 3, H, W) images -> all feature levels (conv4, conv5)."""
        return self.extract_feat_and_attention(batch_inputs)[0]

    def _route(self, feats: Tuple[Tensor, ...]) -> Tuple[Tuple[Tensor], Tuple[Tensor]]:
        """Split the levels into the RPN's input and the RoI head's input."""
        num = len(feats)
        for name, index in (('rpn_feat_index', self.rpn_feat_index), ('roi_feat_index', self.roi_feat_index)):
            if not -num <= index < num:
                raise ValueError(f'ACoupleNet: {name}={index} is out of range for {num} feature level(s); set the '
                                 f'backbone out_indices to (2, 3) for conv4 and conv5')
        return (feats[self.rpn_feat_index], ), (feats[self.roi_feat_index], )

    def _proposals(self, rpn_x: Tuple[Tensor], batch_data_samples: SampleList) -> InstanceList:
        if batch_data_samples[0].get('proposals', None) is not None:
            return [data_sample.proposals for data_sample in batch_data_samples]
        return self.rpn_head.predict(rpn_x, batch_data_samples, rescale=False)

    def loss(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> Dict[str, Tensor]:
        """Attention, RPN and RoI-head losses for a batch, (N, 3, H, W)."""
        feats, attention_logits = self.extract_feat_and_attention(batch_inputs)
        rpn_x, roi_x = self._route(feats)
        losses = dict()
        if self.with_rpn:
            # As TwoStageDetector.loss: the RPN is class-agnostic and its keys get an rpn_ prefix.
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.rpn)
            rpn_data_samples = copy.deepcopy(batch_data_samples)
            for data_sample in rpn_data_samples:
                data_sample.gt_instances.labels = torch.zeros_like(data_sample.gt_instances.labels)
            rpn_losses, rpn_results_list = self.rpn_head.loss_and_predict(
                rpn_x, rpn_data_samples, proposal_cfg=proposal_cfg)
            for key in list(rpn_losses):
                if 'loss' in key and 'rpn' not in key:
                    rpn_losses[f'rpn_{key}'] = rpn_losses.pop(key)
            losses.update(rpn_losses)
        else:
            rpn_results_list = self._proposals(rpn_x, batch_data_samples)
        losses.update(self.roi_head.loss(roi_x, rpn_results_list, batch_data_samples))
        if attention_logits:
            losses.update(self.loss_attention(attention_logits,
                                              [s.gt_instances for s in batch_data_samples],
                                              tuple(batch_inputs.shape[-2:])))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples: SampleList, rescale: bool = True) -> SampleList:
        """Detections for a batch, (N, 3, H, W), added to the data samples."""
        rpn_x, roi_x = self._route(self.extract_feat(batch_inputs))
        rpn_results_list = self._proposals(rpn_x, batch_data_samples)
        results_list = self.roi_head.predict(roi_x, rpn_results_list, batch_data_samples, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results_list)

    def _forward(self, batch_inputs: Tensor, batch_data_samples: SampleList) -> tuple:
        """Raw head outputs (for FLOPs counting and export), no post-processing."""
        rpn_x, roi_x = self._route(self.extract_feat(batch_inputs))
        rpn_results_list = self._proposals(rpn_x, batch_data_samples)
        return (self.roi_head.forward(roi_x, rpn_results_list, batch_data_samples), )
