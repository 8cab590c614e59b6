"""mmdet's per-RoI conv5 shared head, with a configurable width."""
from mmdet.models.backbones import ResNet
from mmdet.models.layers import ResLayer as _ResLayer
from mmdet.models.roi_heads.shared_heads import ResLayer
from mmdet.registry import MODELS


@MODELS.register_module()
class SlimResLayer(ResLayer):
    """:class:`ResLayer` (conv5 run on every RoI, as in Faster R-CNN C4) with ResNet's ``base_channels``.

    mmdet's ``ResLayer`` assumes the standard width (64); this one follows a
    slimmed backbone such as the CPU configs' half-width ResNet-18, so that
    Faster R-CNN C4 can be compared with ACoupleNet at the same width.

    Args:
        base_channels (int): Stem width of the backbone it continues.
        **kwargs: As :class:`ResLayer`.
    """

    def __init__(self, depth: int, stage: int = 3, base_channels: int = 64, **kwargs) -> None:
        super().__init__(depth, stage=stage, **kwargs)
        if base_channels != 64:
            block, stage_blocks = ResNet.arch_settings[depth]
            self.add_module(f'layer{stage + 1}', _ResLayer(
                block, base_channels * 2**(stage - 1) * block.expansion, base_channels * 2**stage,
                stage_blocks[stage], stride=kwargs.get('stride', 2), dilation=kwargs.get('dilation', 1),
                style=kwargs.get('style', 'pytorch'), with_cp=kwargs.get('with_cp', False), norm_cfg=self.norm_cfg,
                dcn=kwargs.get('dcn')))
