"""Cascade attention for ResNet-family backbones (ACoupleNet, Sec. III-B).

After the last residual block of selected stages, an :class:`AttentionBlock`
predicts a class-agnostic foreground map ``A`` from the stage output ``f`` and
the next stage receives ``A * f`` (``A`` broadcast over channels, eq. 3).
Two ablations of where and how the map gates are selectable (``attention_gate``).

``AttentionBackbone(backbone=dict(type='ResNet', ...))`` builds an instance of
a subclass of the wrapped class (``AttentionResNet`` for ``ResNet``) rather
than a module that holds one. That keeps everything the wrapped class does
(frozen stages, ``norm_eval``, pretrained ``init_cfg``, plugins) and keeps the
state-dict layout identical to the wrapped backbone: the only added keys live
under ``attention_blocks.``, and ``attention_stages=()`` adds none, so an
ImageNet or CoupleNet checkpoint loads as is.
"""
import re
from contextlib import contextmanager
from typing import Dict, Iterator, List, Sequence, Tuple, Type

import torch
from mmengine.model import BaseModule, ModuleDict
from torch import Tensor, nn

from mmdet.registry import MODELS

# mmdet names the stages layer1..layer4; the paper names them conv2..conv5.
STAGE_NAMES = ('conv2', 'conv3', 'conv4', 'conv5')
ATTENTION_GATES = ('product', 'residual', 'branch')


class AttentionBlock(BaseModule):
    """3x3 conv, ReLU, 3x3 conv to one channel: the attention logits.

    Both convs start from N(0, 0.01) weights and zero bias, as in the paper, so
    a fresh block gates every position by sigmoid(0) = 0.5.

    Args:
        in_channels (int): Channels of the stage output it reads.
        mid_channels (int): Channels between the two convs.
    """

    def __init__(self, in_channels: int, mid_channels: int = 64) -> None:
        super().__init__(init_cfg=dict(type='Normal', layer='Conv2d', std=0.01, bias=0))
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) features -> (N, 1, H, W) logits (pre-sigmoid)."""
        return self.conv2(self.relu(self.conv1(x)))


def _last_block(stage: nn.Module, stage_name: str) -> Tuple[nn.Module, int]:
    """A residual stage's last block and the index i of its last ``conv<i>``."""
    try:
        block = stage[-1]
    except (TypeError, IndexError) as exc:
        raise TypeError(f'stage {stage_name!r} is not a sequence of residual blocks') from exc
    convs = [int(name[4:]) for name, _ in block.named_children() if re.fullmatch(r'conv\d+', name)]
    if not convs:
        raise TypeError(f'cannot find the output convolution of stage {stage_name!r}: its last block '
                        f'({type(block).__name__}) has no conv1/conv2/conv3 children')
    return block, max(convs)


def _stage_out_channels(stage: nn.Module, stage_name: str) -> int:
    """Output channels of a residual stage: those of its last block's last conv."""
    block, last = _last_block(stage, stage_name)
    return getattr(block, f'conv{last}').out_channels


def _residual_branch_end(stage: nn.Module, stage_name: str) -> str:
    """Dotted name, within the stage, of the norm after its last block's last conv: the end of F(x)."""
    block, last = _last_block(stage, stage_name)
    if getattr(block, 'with_cp', False):
        # Checkpointing re-runs the block in the backward pass, and the hook with it.
        raise ValueError(f"attention_gate='branch' cannot gate stage {stage_name!r}: its blocks use "
                         f"with_cp=True; set with_cp=False or use attention_gate='product'")
    norm = getattr(block, f'norm{last}', None)
    if not isinstance(norm, nn.Module):
        raise TypeError(f"attention_gate='branch' needs the last block of stage {stage_name!r} to end its "
                        f"residual branch with conv<i> and norm<i> (mmdet's BasicBlock and Bottleneck); "
                        f"{type(block).__name__} has no norm{last}: use attention_gate='product'")
    # mmdet's norm<i> is a property over the registered child (bn3, gn3, ...): hooks need the child's name.
    child = next(name for name, module in block.named_children() if module is norm)
    return f'{len(stage) - 1}.{child}'


class AttentionMixin:
    """Adds cascade attention to a ResNet-family backbone class.

    Combined with the wrapped class as ``class AttentionResNet(AttentionMixin,
    ResNet)``; it relies only on the ``res_layers`` list of stage names that
    all of mmdet's ResNet-family backbones (ResNet, ResNetV1d, ResNeXt, Res2Net,
    ResNeSt, RegNet) keep, and on their own ``forward``.

    Args:
        attention_stages (Sequence[int]): 0-based indices into ``res_layers``
            after which to gate: 0 = conv2 (stride 4), 1 = conv3 (stride 8),
            2 = conv4 (stride 16 in R-FCN-style dilated backbones).
            ``()`` disables attention.
        attention_channels (int): Hidden channels of each attention block.
        attention_gate (str): How a map A gates the stage output f:
            'product' gives ``A * f`` (the paper's eq. 3); 'residual' gives
            ``(1 + A) * f`` (Residual Attention Network, Wang et al., CVPR
            2017), which amplifies the foreground without erasing the
            background, an ablation of the gating in series; 'branch' gates
            the residual branch F(x) of the stage's last block before its
            shortcut is added, ``relu(x + A * F(x))`` with A predicted from
            F(x), which reads the paper's "inserted in each stage's last
            residual block" literally: the shortcut passes the ungated
            features on, so the gates of successive stages do not compound.
        **kwargs: Arguments of the wrapped backbone class.
    """

    def __init__(self, *, attention_stages: Sequence[int] = (0, 1, 2), attention_channels: int = 64,
                 attention_gate: str = 'product', **kwargs) -> None:
        super().__init__(**kwargs)
        if attention_gate not in ATTENTION_GATES:
            raise ValueError(f'attention_gate={attention_gate!r} is not supported; use one of {ATTENTION_GATES}')
        self.attention_gate = attention_gate
        if not hasattr(self, 'res_layers'):
            raise ValueError(f'AttentionBackbone: {type(self).__mro__[2].__name__} is not a ResNet-family '
                             f'backbone (it has no `res_layers`); wrap ResNet, ResNetV1d, ResNeXt, ...')
        num_stages = len(self.res_layers)
        allowed = tuple(range(num_stages))
        stages = tuple(attention_stages)
        if (not all(isinstance(s, int) and not isinstance(s, bool) for s in stages)
                or len(set(stages)) != len(stages) or not set(stages) <= set(allowed)):
            named = ', '.join(f'{i} ({STAGE_NAMES[i] if i < len(STAGE_NAMES) else self.res_layers[i]})'
                              for i in allowed)
            raise ValueError(f'attention_stages={attention_stages!r} is invalid for a backbone with '
                             f'{num_stages} stages: use distinct stage indices from {named}, '
                             f'or () for no attention')
        self.attention_stages = tuple(sorted(stages))
        # The module each map gates, by stage name, resolved (and checked) once at build time: the stage
        # itself, or for 'branch' the norm that ends its last residual branch.
        self.gated_module_names = {
            name: (f'{name}.{_residual_branch_end(getattr(self, name), name)}' if attention_gate == 'branch'
                   else name)
            for name in (self.res_layers[i] for i in self.attention_stages)
        }
        if self.attention_stages:
            self.attention_blocks = ModuleDict({  # mmengine's, so init_weights reaches the blocks
                self.res_layers[i]: AttentionBlock(
                    _stage_out_channels(getattr(self, self.res_layers[i]), self.res_layers[i]),
                    attention_channels)
                for i in self.attention_stages
            })
        else:
            self.attention_blocks = None

    @property
    def with_attention(self) -> bool:
        return bool(self.attention_stages)

    def forward_with_attention(self, x: Tensor) -> Tuple[Tuple[Tensor, ...], List[Tensor]]:
        """Run the backbone with gating.

        Args:
            x (Tensor): Images, (N, 3, H, W).

        Returns:
            tuple: ``(feats, attention_logits)`` where ``feats`` is the wrapped
            backbone's output tuple and ``attention_logits`` holds one
            (N, 1, H_s, W_s) logit map per attention stage, shallowest first.
        """
        logits: List[Tensor] = []
        if not self.with_attention:
            return super().forward(x), logits

        def gate(name: str):
            def hook(module: nn.Module, args, output: Tensor) -> Tensor:
                logit = self.attention_blocks[name](output)
                logits.append(logit)
                attention = logit.sigmoid()
                scale = attention + 1 if self.attention_gate == 'residual' else attention
                # Without autograd nothing else reads the ungated output: gating it in place spares a
                # fresh copy (at stride 4, 40 MB at 600 x 1000: 10 ms on 2 CPU cores, 2026-12-04).
                return output * scale if torch.is_grad_enabled() else output.mul_(scale)
            return hook

        # Hooks on the stages (for 'branch', on the norm that ends each stage's
        # last residual branch) let the wrapped class's own forward run unchanged
        # (deep stems, RegNet's stem without max-pool, plugins). They live only
        # for this call, so the module carries no per-batch state.
        handles = [self.get_submodule(self.gated_module_names[name]).register_forward_hook(gate(name))
                   for name in self.attention_blocks]
        try:
            feats = super().forward(x)
        finally:
            for handle in handles:
                handle.remove()
        return feats, logits

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """(N, 3, H, W) images -> the wrapped backbone's feature tuple, gated."""
        return self.forward_with_attention(x)[0]


_ATTENTION_CLASSES: Dict[type, type] = {}


def attention_class(base: Type[nn.Module]) -> type:
    """``Attention<Base>``: the (cached) subclass of ``base`` with cascade attention."""
    if base not in _ATTENTION_CLASSES:
        name = f'Attention{base.__name__}'
        cls = type(name, (AttentionMixin, base), {'__module__': __name__, '__qualname__': name,
                                                  '__doc__': f'{base.__name__} with cascade attention '
                                                             f'(see AttentionMixin).'})
        # Module-level name so that pickling a whole model finds the class.
        globals()[name] = cls
        _ATTENTION_CLASSES[base] = cls
    return _ATTENTION_CLASSES[base]


@MODELS.register_module()
def AttentionBackbone(backbone: dict, attention_stages: Sequence[int] = (0, 1, 2),  # noqa: N802 (a registry type)
                      attention_channels: int = 64, attention_gate: str = 'product') -> nn.Module:
    """Build a ResNet-family backbone with cascade attention blocks.

    Args:
        backbone (dict): Config of the wrapped backbone, e.g.
            ``dict(type='ResNet', depth=101, ...)``.
        attention_stages (Sequence[int]): See :class:`AttentionMixin`.
        attention_channels (int): Hidden channels of each attention block.
        attention_gate (str): 'product' (``A * f``, the paper's),
            'residual' (``(1 + A) * f``) or 'branch' (``A`` gates the last
            block's residual branch); see :class:`AttentionMixin`.

    Returns:
        nn.Module: An instance of ``Attention<Type>``, a subclass of the
        wrapped type, so ``isinstance(model, ResNet)`` still holds.
    """
    cfg = dict(backbone)
    backbone_type = cfg.pop('type', None)
    base = MODELS.get(backbone_type) if isinstance(backbone_type, str) else backbone_type
    if not (isinstance(base, type) and issubclass(base, nn.Module)):
        raise ValueError(f'AttentionBackbone: backbone type {backbone_type!r} is not a registered backbone '
                         f'class; use a ResNet-family type such as "ResNet", "ResNetV1d" or "ResNeXt"')
    if issubclass(base, AttentionMixin):
        raise ValueError('AttentionBackbone: the wrapped backbone already has attention; '
                         'wrap the plain backbone config instead')
    return attention_class(base)(attention_stages=attention_stages, attention_channels=attention_channels,
                                 attention_gate=attention_gate, **cfg)


def attention_maps(backbone: nn.Module, images: Tensor) -> List[Tensor]:
    """Sigmoid attention maps of ``backbone`` for (N, 3, H, W) images, no grad.

    Returns one (N, 1, H_s, W_s) map in [0, 1] per attention stage; empty for a
    backbone without attention.
    """
    if not isinstance(backbone, AttentionMixin):
        return []
    with torch.no_grad():
        _, logits = backbone.forward_with_attention(images)
    return [logit.sigmoid() for logit in logits]


@contextmanager
def capture_attention(backbone: nn.Module) -> Iterator[List[Tensor]]:
    """Collect the attention maps of every forward pass run inside the ``with`` block.

    ``with capture_attention(model.backbone) as maps: model.predict(...)``
    gives the (N, 1, H_s, W_s) sigmoid maps the detections were gated with,
    shallowest first, without a second backbone pass; nothing for a backbone
    without attention.
    """
    maps: List[Tensor] = []
    blocks = backbone.attention_blocks if isinstance(backbone, AttentionMixin) and backbone.with_attention else {}
    handles = [block.register_forward_hook(lambda module, args, logit: maps.append(logit.detach().sigmoid()))
               for block in blocks.values()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
