"""ACoupleNet for MMDetection 3.x: importing this package registers its modules.

Configs load it with ``custom_imports = dict(imports=['projects.acouplenet'])``.
"""
from .acouplenet import ACoupleNet
from .attention_backbone import AttentionBackbone, AttentionBlock, AttentionMixin, attention_maps
from .attention_loss import AttentionLoss, attention_targets
from .coupled_bbox_head import CoupledBBoxHead
from .coupled_roi_head import CoupledRoIHead
from .datasets import VOCSBDDataset
from .roi_extractors import PSRoIExtractor, context_rois
from .transforms import LoadAttentionAnnotations

__version__ = '0.1.0'

__all__ = [
    'ACoupleNet', 'AttentionBackbone', 'AttentionBlock', 'AttentionMixin', 'AttentionLoss', 'CoupledBBoxHead',
    'CoupledRoIHead', 'LoadAttentionAnnotations', 'PSRoIExtractor', 'VOCSBDDataset', 'attention_maps', 'attention_targets', 'context_rois'
]
