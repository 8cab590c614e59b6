"""ACoupleNet for MMDetection 3.x.

Configs load it with ``custom_imports = dict(imports=['projects.acouplenet'])``. Importing it registers
its modules in mmdet's registries, allow-lists mmengine's checkpoint types for ``weights_only`` loading
(so ``--resume`` works on torch >= 2.6), names what is wrong with a bad local checkpoint wherever mmengine
loads one, loads the checkpoints that mmengine names by URL with the same safe loading (mmengine would
unpickle them unsafely), and makes mmengine's local file writes atomic (so a run killed while saving leaves
its previous checkpoint whole).
"""
from .acouplenet import ACoupleNet
from .attention_backbone import AttentionBackbone, AttentionBlock, AttentionMixin, attention_maps, capture_attention
from .attention_loss import AttentionLoss, attention_targets
from .coupled_bbox_head import CoupledBBoxHead
from .coupled_roi_head import CoupledRoIHead
from .datasets import CheckedCocoDataset, CheckedDatasetMixin, VOCSBDDataset
from .fileio import use_atomic_local_writes
from .hooks import ClassCountCheckHook, NonFiniteLossHook, RNGStateHook
from .model_zoo import use_safe_url_loading
from .res_layer import SlimResLayer
from .roi_extractors import PSRoIExtractor, TorchvisionRoIExtractor, context_rois
from .safe_loading import allow_mmengine_checkpoint_types, use_safe_local_loading
from .test_time_aug import UnflippedViewTTAModel

__version__ = '0.1.0'

allow_mmengine_checkpoint_types()
use_safe_local_loading()
use_safe_url_loading()
use_atomic_local_writes()

__all__ = [
    'ACoupleNet', 'AttentionBackbone', 'AttentionBlock', 'AttentionMixin', 'AttentionLoss', 'CheckedCocoDataset',
    'CheckedDatasetMixin', 'ClassCountCheckHook', 'CoupledBBoxHead', 'CoupledRoIHead', 'NonFiniteLossHook',
    'PSRoIExtractor', 'RNGStateHook', 'SlimResLayer', 'TorchvisionRoIExtractor', 'UnflippedViewTTAModel',
    'VOCSBDDataset', 'attention_maps', 'attention_targets', 'capture_attention', 'context_rois'
]
