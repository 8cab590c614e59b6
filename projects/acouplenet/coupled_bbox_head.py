"""The coupling module of CoupleNet / ACoupleNet (Sec. III-C to III-E).

A shared 1x1 conv + ReLU reduces conv5 to ``mid_channels`` (1024), optionally
followed by residual bottleneck blocks (the paper's Table IV). From it:

* the **local FCN** (R-FCN): 1x1 convs to ``k*k*(C+1)`` class maps and
  ``k*k*R`` box maps (R = 4, or 4*C class-specific), pooled position-
  sensitively by the RoI head and averaged over the ``k x k`` bins (voting);
* the **global FCN**: the reduced map RoI-pooled (k x k) over the proposal and,
  with context, over its 2x context region, concatenated, then a k x k conv
  and a 1x1 conv (both + ReLU) and 1x1 classifiers to ``C+1`` and ``R``.

The two branches' scores are normalised ('none', 'l2' or a learned 1x1 conv
per branch) and coupled ('sum', 'prod' or 'max'); box deltas alike.
``normalized_branches`` and ``normalize_deltas`` narrow what is normalised:
the authors' released CoupleNet scales the local class scores alone.
``local_branches=3`` without the global FCN is the paper's Table IV baseline
"3x PSRoI pooling": three local FCNs coupled the same way.

Everything after the scores, targets, losses and post-processing (softmax,
box decoding, NMS), is mmdet's :class:`BBoxHead`.
"""
import difflib
import functools
import inspect
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.models.roi_heads.bbox_heads import BBoxHead
from mmdet.registry import MODELS

NORMALIZATIONS = ('none', 'l2', 'conv')
COUPLINGS = ('sum', 'prod', 'max')
CONTEXT_BRANCHES = ('global', 'local')


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f'CoupledBBoxHead: {name}={value!r} is invalid; allowed values are '
                         f'{", ".join(repr(a) for a in allowed)}')


def _check_kwargs(kwargs: dict) -> None:
    """Reject unknown arguments with a suggestion, before BBoxHead's bare TypeError."""
    passed_through = set(inspect.signature(BBoxHead.__init__).parameters) - {
        'self', 'with_avg_pool', 'with_cls', 'with_reg', 'roi_feat_size', 'in_channels'}
    unknown = sorted(set(kwargs) - passed_through)
    if unknown:
        own = set(inspect.signature(CoupledBBoxHead.__init__).parameters) - {'self', 'kwargs'}
        known = sorted(passed_through | own)
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise TypeError(f'CoupledBBoxHead got unknown argument(s) {", ".join(hints)}; '
                        f'valid arguments are {", ".join(known)}')


class HeadBottleneck(nn.Module):
    """The residual block of the paper's Table IV: 1x1 conv to C/4, 3x3 conv, 1x1 conv back to C, plus x.

    ``relu(x + conv3(relu(conv2(relu(conv1(x))))))`` on the (N, C, H, W)
    reduced map; the paper adds one or two to a single-branch head to match
    CoupleNet's parameter count ("1x1x256, 3x3x256 and 1x1x1024" for C=1024).
    No normalisation layers: the head's other new layers have none either.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        width = max(channels // 4, 1)
        self.conv1 = nn.Conv2d(channels, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(width, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        return F.relu(x + self.conv3(out))


# oneDNN's fused linear + pointwise op (PyTorch builds with oneDNN ship it; others fall back to F.linear).
_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')
_blas_only = False


@contextmanager
def blas_linear() -> Iterator[None]:
    """Inside the block :func:`linear_relu` takes ``F.linear`` on the CPU too.

    For timing what oneDNN saves (``tools/benchmark_speed.py --models
    acouplenet acouplenet-blas --paired N``); not thread-safe.
    """
    global _blas_only
    previous, _blas_only = _blas_only, True
    try:
        yield
    finally:
        _blas_only = previous


def linear_relu(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``relu(x @ weight.T + bias)`` for (n, K) ``x`` and (M, K) ``weight``: (n, M).

    On the CPU without autograd (inference) this is oneDNN's inner product
    with the ReLU fused, the library of PyTorch's own CPU convolutions (and
    of ``torch.compile``'s CPU linear layers), instead of the BLAS ``sgemm``
    that ``F.linear`` calls. PyTorch's MKL takes a slower code path on AMD
    CPUs: on a 2-core AMD EPYC (AVX-512) the global branch's 300 x 100352 x
    1024 product took 0.32 s in ``F.linear`` (179 GFLOP/s, half of what the
    backbone's oneDNN convolutions reach there) and 0.15 s here (2026-12-04,
    timed alone; outputs equal to rounding). On a 2-core Intel Xeon (AVX-512)
    MKL is the faster one, by less: 239 ms against 254 ms the same day, a
    cost this keeps for the 2x it saves on AMD CPUs. Training (oneDNN's op
    has no backward), CUDA and other dtypes take ``F.linear``, and so do tracing (FLOP counters,
    ONNX export: the op's arguments do not trace, and counters know
    ``aten::linear``) and ``torch.compile``, which picks its own kernels.
    """
    if (x.device.type == 'cpu' and x.dtype == torch.float32 and _ONEDNN_LINEAR and not _blas_only
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, 'relu', [], '')
    return F.relu(F.linear(x, weight, bias))


def kxk_operands(feats: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """A k x k conv on k x k inputs as one matrix product: its (n, K) and (M, K) operands.

    ``feats`` (n, C, k, k) and ``weight`` (M, C, k, k) are flattened in the
    weight's memory order, (k, k, C) for a channels-last weight and (C, k, k)
    otherwise, so that the 400 MB weight of the R-101 global branch is never
    copied and features in the same layout are read in place. The product is
    the same in either order (a sum over the same K terms).
    """
    if weight.is_contiguous():
        return feats.flatten(1), weight.flatten(1)
    return feats.permute(0, 2, 3, 1).flatten(1), weight.permute(0, 2, 3, 1).flatten(1)


class WholeInputConvReLU(nn.Conv2d):
    """A conv whose kernel covers its whole input, + ReLU: (n, C, kh, kw) -> (n, out_channels).

    The global branch's k x k conv on k x k pooled RoI features, and its 1x1
    conv on the 1 x 1 result, leave one value per RoI and output channel, so
    each is one matrix product (:func:`kxk_operands`, :func:`linear_relu`),
    run here as the module's own forward so that hooks and FLOP counters see
    the layer. It keeps ``nn.Conv2d``'s parameters, state-dict keys and
    init. Same weights and outputs as the conv: on the CPU the product is
    much faster (2026-11-25, 2 busy cores: 300 RoIs of 2048 x 7 x 7 -> 1024,
    1.0 s vs the conv's 5.2 s, 5.0 vs 37.7 s with backward; the shapes
    configs' 512 RoIs of 256 x 7 x 7 -> 128, 41 vs 108 ms, 0.20 vs 0.65 s
    with backward), and on a GPU no slower (H200, 2026-11-26, 300 RoIs:
    2.07 ms in fp32 vs 2.19 ms for cuDNN's TF32 conv, which also takes a
    500 MB workspace; a split-K form saved 0.3 ms at inference but slowed
    training).
    """

    def forward(self, x: Tensor) -> Tensor:
        """(n, C, kh, kw) with (kh, kw) the kernel size, or (n, C) for a 1x1 kernel -> (n, out_channels)."""
        if x.dim() == 2:
            x = x[:, :, None, None]
        return linear_relu(*kxk_operands(x, self.weight), self.bias)


def couple(local: Tensor, global_: Tensor, coupling: str) -> Tensor:
    """Element-wise coupling of two (n, D) branch outputs."""
    if coupling == 'sum':
        return local + global_
    if coupling == 'prod':
        return local * global_
    if coupling == 'max':
        return torch.maximum(local, global_)
    raise ValueError(f'coupling={coupling!r} is invalid; allowed values are {COUPLINGS}')


@MODELS.register_module()
class CoupledBBoxHead(BBoxHead):
    """Local (position-sensitive) and global (RoI + context) FCN heads, coupled.

    Args:
        in_channels (int): Channels of the conv5 map the head reads (2048).
        mid_channels (int): Channels of the shared 1x1 reduction (1024).
        global_channels (int): Channels of the global branch's k x k and 1x1
            convs (1024).
        group_size (int): ``k``, the bins per side of PS pooling and the RoI
            pooling size of the global branch (7).
        num_classes (int): Foreground classes ``C``.
        with_local (bool): Use the local FCN. ``with_global=False`` with it
            is R-FCN.
        local_branches (int): Independent local FCNs (1). Each has its own
            class and box maps, pooled in one PS pooling call, and counts as a
            branch of the coupling; the paper's Table IV couples three,
            without the global FCN ("3x PSRoI pooling"), to show that
            CoupleNet's gain is not its parameter count.
        with_global (bool): Use the global FCN.
        with_context (bool): Pool the context region too.
        context_branch (str): Branch that gets the context: 'global' (the
            paper's design, concatenated features) or 'local' (the Table III
            ablation: the context region's voted class scores are added to
            the proposal's).
        context_scale (float): Side scale of the context region (2.0).
        normalization (str): 'none', 'l2' (unit L2 norm per RoI) or 'conv'
            (a learned (D -> D) 1x1 conv per branch, initialised to the
            identity so training starts as 'none').
        normalized_branches (tuple[str], optional): The branches whose
            outputs are normalised, of ``branch_names`` (one name may be a
            string); None (default): every branch, as the paper describes
            it. Ignored with 'none' and by single-branch heads.
        normalize_deltas (bool): Normalise the box deltas as the scores
            (True) or couple them as they are (False). The authors' CoupleNet
            (test_agnostic.prototxt) scales only the local branch's voted
            class scores, a (C+1) -> (C+1) 1x1 conv, and sums the deltas as
            they are: ``normalization='conv', normalized_branches=('local',),
            normalize_deltas=False``.
        coupling (str): 'sum', 'prod' or 'max'.
        reg_class_agnostic (bool): One box per RoI (the paper) or one per class.
        extra_blocks (int): :class:`HeadBottleneck` blocks after the shared
            reduction, before both branches (0; the paper's Table IV adds one
            or two to R-FCN and to the global FCN to match CoupleNet's
            parameter count).
        **kwargs: ``bbox_coder``, ``loss_cls``, ``loss_bbox``, ... of
            :class:`BBoxHead`.
    """

    def __init__(self,
                 in_channels: int = 2048,
                 mid_channels: int = 1024,
                 global_channels: int = 1024,
                 group_size: int = 7,
                 num_classes: int = 80,
                 with_local: bool = True,
                 local_branches: int = 1,
                 with_global: bool = True,
                 with_context: bool = True,
                 context_branch: str = 'global',
                 context_scale: float = 2.0,
                 normalization: str = 'conv',
                 normalized_branches: Optional[Tuple[str, ...]] = None,
                 normalize_deltas: bool = True,
                 coupling: str = 'sum',
                 reg_class_agnostic: bool = True,
                 extra_blocks: int = 0,
                 init_cfg=None,
                 **kwargs) -> None:
        _check_kwargs(kwargs)
        _check_choice('normalization', normalization, NORMALIZATIONS)
        _check_choice('coupling', coupling, COUPLINGS)
        _check_choice('context_branch', context_branch, CONTEXT_BRANCHES)
        for name, value in (('with_local', with_local), ('with_global', with_global), ('with_context', with_context),
                            ('normalize_deltas', normalize_deltas)):
            if not isinstance(value, bool):
                raise ValueError(f'CoupledBBoxHead: {name}={value!r} must be True or False')
        if not (with_local or with_global):
            raise ValueError('CoupledBBoxHead: with_local and with_global are both False; '
                             'enable at least one branch')
        if not (isinstance(group_size, int) and group_size >= 1):
            raise ValueError(f'CoupledBBoxHead: group_size={group_size!r} must be a positive int (7 in the paper)')
        if not (isinstance(local_branches, int) and not isinstance(local_branches, bool) and local_branches >= 1):
            raise ValueError(f'CoupledBBoxHead: local_branches={local_branches!r} must be an int >= 1 (the paper\'s '
                             f'Table IV couples 3)')
        if local_branches > 1 and not with_local:
            raise ValueError(f'CoupledBBoxHead: local_branches={local_branches} needs with_local=True')
        if not (isinstance(extra_blocks, int) and not isinstance(extra_blocks, bool) and extra_blocks >= 0):
            raise ValueError(f'CoupledBBoxHead: extra_blocks={extra_blocks!r} must be an int >= 0 (the paper\'s '
                             f'Table IV uses 1 or 2)')
        if not context_scale > 0:
            raise ValueError(f'CoupledBBoxHead: context_scale={context_scale!r} must be > 0')
        # The classifiers of the global branch are BBoxHead's fc_cls / fc_reg; they see the 1 x 1
        # output of the k x k conv, hence roi_feat_size=1.
        super().__init__(with_avg_pool=False, with_cls=True, with_reg=True, roi_feat_size=1,
                         in_channels=global_channels, num_classes=num_classes,
                         reg_class_agnostic=reg_class_agnostic, init_cfg=init_cfg, **kwargs)
        if self.custom_cls_channels:
            raise ValueError(f'CoupledBBoxHead: {type(self.loss_cls).__name__} needs custom classifier '
                             f'channels, which the position-sensitive maps do not support; use '
                             f'CrossEntropyLoss or FocalLoss-style losses with C+1 outputs')
        self.feat_channels = in_channels
        self.mid_channels = mid_channels
        self.global_channels = global_channels
        self.group_size = group_size
        self.with_local = with_local
        self.local_branches = local_branches
        self.with_global = with_global
        self.with_context = with_context
        self.context_branch = context_branch
        self.context_scale = float(context_scale)
        self.normalization = normalization
        self.normalized_branches = self._check_normalized_branches(normalized_branches)
        self.normalize_deltas = normalize_deltas
        self.coupling = coupling
        self.cls_dim = num_classes + 1
        self.reg_dim = self.bbox_coder.encode_size * (1 if reg_class_agnostic else num_classes)

        k2 = group_size * group_size
        self.reduce_conv = nn.Conv2d(in_channels, mid_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        init = [dict(type='Normal', std=0.01, bias=0, override=dict(name='reduce_conv'))]
        if extra_blocks:
            self.extra_blocks = nn.Sequential(*(HeadBottleneck(mid_channels) for _ in range(extra_blocks)))
            init.append(dict(type='Normal', std=0.01, bias=0, override=dict(name='extra_blocks')))
        else:
            self.extra_blocks = None
        if with_local:
            # One conv for all local branches: output channel c of a PS map belongs to the pooled
            # channel c // k^2, so branch b's class maps are the block of pooled channels
            # [b*(C+1), (b+1)*(C+1)), independent weights as if each branch had its own conv.
            self.local_cls_conv = nn.Conv2d(mid_channels, k2 * self.cls_dim * local_branches, 1)
            self.local_reg_conv = nn.Conv2d(mid_channels, k2 * self.reg_dim * local_branches, 1)
            init += [dict(type='Normal', std=0.01, bias=0, override=dict(name='local_cls_conv')),
                     dict(type='Normal', std=0.01, bias=0, override=dict(name='local_reg_conv'))]
        if with_global:
            global_in = mid_channels * (2 if self.global_context else 1)
            # Channels-last weight, (out, k, k, in) in memory: the order in which the RoI pooling writes
            # the (n, k, k, in) features, so that the k x k conv's matrix product reads both operands in
            # place (kxk_operands follows the weight's layout; every layout gives equal results).
            self.global_conv = WholeInputConvReLU(global_in, global_channels, group_size).to(
                memory_format=torch.channels_last)
            self.global_fc = WholeInputConvReLU(global_channels, global_channels, 1)
            init += [dict(type='Normal', std=0.01, bias=0, override=dict(name='global_conv')),
                     dict(type='Normal', std=0.01, bias=0, override=dict(name='global_fc')),
                     dict(type='Normal', std=0.01, bias=0, override=dict(name='fc_cls')),
                     dict(type='Normal', std=0.001, bias=0, override=dict(name='fc_reg'))]
        else:
            del self.fc_cls, self.fc_reg
        if self.coupled and normalization == 'conv':
            # A 1x1 conv on a (n, D, 1, 1) score map is a D -> D linear map. Registered all class scales
            # first, the order of the two-branch head's, which the gradient norm's sum follows.
            for kind, dim in (('cls', self.cls_dim), ('reg', self.reg_dim)):
                for branch in self.branch_names:
                    if self._normalizes(branch, kind):
                        setattr(self, f'{branch}_{kind}_scale', self._identity_linear(dim))
        if init_cfg is None:
            self.init_cfg = init
        self._branch_alone: Optional[str] = None  # set by branch_alone()
        self._decisions: Optional[Dict[str, Tensor]] = None  # set by count_decisions()

    def _check_normalized_branches(self, names: Optional[Tuple[str, ...]]) -> Tuple[str, ...]:
        """``normalized_branches`` as a tuple of branch names (None: all of them), checked where it applies."""
        if names is None or not self.coupled or self.normalization == 'none':
            return self.branch_names
        given = (names, ) if isinstance(names, str) else tuple(names)
        unknown = [name for name in given if name not in self.branch_names]
        if not given or unknown or len(set(given)) != len(given):
            raise ValueError(f'CoupledBBoxHead: normalized_branches={names!r} must name one or more of the '
                             f'branches {", ".join(map(repr, self.branch_names))}, each once (None: all; '
                             f'normalization=\'none\' for none)')
        return tuple(name for name in self.branch_names if name in given)

    def _normalizes(self, branch: str, kind: str) -> bool:
        """Whether a normalisation ('l2' or 'conv') applies to ``branch``'s ``kind`` ('cls' or 'reg') output."""
        return (self.normalization != 'none' and branch in self.normalized_branches
                and (kind == 'cls' or self.normalize_deltas))

    @staticmethod
    def _identity_linear(dim: int) -> nn.Linear:
        layer = nn.Linear(dim, dim)
        nn.init.eye_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    @property
    def branch_names(self) -> Tuple[str, ...]:
        """The coupled branches in order: 'local', 'local2', ..., then 'global'."""
        local = ('local', ) + tuple(f'local{b + 1}' for b in range(1, self.local_branches)) if self.with_local else ()
        return local + (('global', ) if self.with_global else ())

    @contextmanager
    def branch_alone(self, branch: str) -> Iterator[None]:
        """Inside the block the head scores with one branch: its output, normalised as in the coupling.

        The other branches are left out of the coupling, scores and box deltas
        alike, so that a trained coupled model can be tested branch by branch
        (``tools/test.py --branches``); the weights are untouched.
        """
        if not self.coupled:
            raise ValueError(f'CoupledBBoxHead: branch_alone needs a coupled head; this one has the single '
                             f'branch {self.branch_names[0]!r}')
        if branch not in self.branch_names:
            raise ValueError(f'CoupledBBoxHead: branch_alone({branch!r}): no such branch; the branches are '
                             f'{", ".join(map(repr, self.branch_names))}')
        previous, self._branch_alone = self._branch_alone, branch
        try:
            yield
        finally:
            self._branch_alone = previous

    @contextmanager
    def count_decisions(self) -> Iterator[Dict[str, Tensor]]:
        """Inside the block, count how the coupling arrives at each RoI's top class.

        Yields a dict of int64 counts, filled as the head scores (scores inside
        :meth:`branch_alone` are not counted); row 0 of each counts every RoI
        scored, row 1 only those whose coupled top class is a foreground class:

        * ``'agreement'``, (2, 2**B) for the B ``branch_names``: RoIs by the
          set of branches whose own top class (the argmax of the branch's
          normalised scores) is the coupled top class, column ``sum(2**b)``
          over those branches b (0: none, 2**B - 1: all;
          :meth:`agreement_labels` names the columns). Whether the coupling
          follows one branch, settles their disagreements, or picks a class
          that no branch alone would.
        * ``'max_source'``, (2, B), for the 'max' coupling only: RoIs by the
          branch whose score the maximum took at the top class (the first on a
          tie). Whether the maximum mixes the branches or splits the work
          between them (one branch supplying the object classes, the other
          the background).

        Where the RoIs come with their true classes (``roi_labels`` of
        :meth:`forward`, which :class:`CoupledRoIHead` gives from the gt boxes
        while counting), whether each decision was right, over the RoIs whose
        coupled top class is a foreground class (row 1 of ``'agreement'``):

        * ``'labelled'``, (2**B,): those RoIs with a true class, by the
          agreement column;
        * ``'correct'``, (1 + B, 2**B): of them, those whose coupled top
          class (row 0) and whose branch b's own top class (row 1 + b) is the
          true class. Where no branch agrees (column 0) a right coupled class
          is one that every branch alone got wrong.
        """
        if not self.coupled:
            raise ValueError(f'CoupledBBoxHead: count_decisions needs a coupled head; this one has the single '
                             f'branch {self.branch_names[0]!r}')
        num_branches = len(self.branch_names)
        counts = {'agreement': torch.zeros(2, 2**num_branches, dtype=torch.long),
                  'labelled': torch.zeros(2**num_branches, dtype=torch.long),
                  'correct': torch.zeros(1 + num_branches, 2**num_branches, dtype=torch.long)}
        if self.coupling == 'max':
            counts['max_source'] = torch.zeros(2, num_branches, dtype=torch.long)
        previous, self._decisions = self._decisions, counts
        try:
            yield counts
        finally:
            self._decisions = previous

    @property
    def counting_decisions(self) -> bool:
        """Inside :meth:`count_decisions`, where the coupled scores are counted (not inside :meth:`branch_alone`)."""
        return self._decisions is not None and self._branch_alone is None

    def agreement_labels(self) -> Tuple[str, ...]:
        """Names of :meth:`count_decisions`' agreement columns: 'none', 'local only', ..., 'all'."""
        labels = []
        for column in range(2**len(self.branch_names)):
            agreeing = [name for b, name in enumerate(self.branch_names) if column >> b & 1]
            labels.append('none' if not agreeing else 'all' if len(agreeing) == len(self.branch_names)
                          else ' + '.join(agreeing) + ' only')
        return tuple(labels)

    @property
    def coupled(self) -> bool:
        """More than one branch, so normalisation and coupling apply."""
        return len(self.branch_names) > 1

    @property
    def global_context(self) -> bool:
        return self.with_global and self.with_context and self.context_branch == 'global'

    @property
    def local_context(self) -> bool:
        return self.with_local and self.with_context and self.context_branch == 'local'

    @property
    def map_names(self) -> Tuple[str, ...]:
        """Keys of :meth:`forward_maps`, in a fixed order."""
        return tuple(name for name, used in (('local', self.with_local), ('global', self.with_global)) if used)

    def forward_maps(self, x: Tensor) -> Dict[str, Tensor]:
        """Per-image maps that the RoI head pools.

        Args:
            x (Tensor): conv5 features, (N, in_channels, H, W).

        Returns:
            dict: ``'local'``: (N, k*k*B*(C+1+R), H, W) for B =
            ``local_branches``, the ``k*k*B*(C+1)`` class maps (branch by
            branch) followed by the ``k*k*B*R`` box maps, in the layout of
            :class:`PSRoIExtractor`; ``'global'``: (N, mid_channels, H, W).
        """
        if x.size(1) != self.feat_channels:
            raise ValueError(f'CoupledBBoxHead: got a {x.size(1)}-channel feature map, expected '
                             f'in_channels={self.feat_channels}')
        shared = self.relu(self.reduce_conv(x))
        if self.extra_blocks is not None:
            shared = self.extra_blocks(shared)
        maps = {}
        if self.with_local:
            maps['local'] = torch.cat([self.local_cls_conv(shared), self.local_reg_conv(shared)], dim=1)
        if self.with_global:
            maps['global'] = shared
        return maps

    def forward(self, local_bins: Optional[Tensor] = None, global_feats: Optional[Tensor] = None,
                local_context_bins: Optional[Tensor] = None,
                roi_labels: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """Scores and box deltas of n RoIs.

        Args:
            local_bins (Tensor, optional): PS-pooled local maps,
                (n, B*(C+1+R), k, k) for B = ``local_branches``.
            global_feats (Tensor, optional): RoI-pooled global features,
                (n, mid_channels * (2 with context else 1), k, k).
            local_context_bins (Tensor, optional): PS-pooled local maps of the
                context regions, (n, B*(C+1+R), k, k), for
                ``context_branch='local'``.
            roi_labels (Tensor, optional): (n,) the true class of each RoI
                (C for the background), read only by :meth:`count_decisions`.

        Returns:
            tuple: ``cls_score`` (n, C+1) and ``bbox_pred`` (n, R).
        """
        branch_cls, branch_reg = [], []  # (n, C+1) and (n, R) of each branch, in branch_names order
        if self.with_local:
            if local_bins is None:
                raise ValueError('CoupledBBoxHead: the local branch needs local_bins')
            num_cls = self.cls_dim * self.local_branches
            votes = local_bins.mean(dim=(2, 3))  # average voting over the k x k bins
            local_cls, local_reg = votes.split([num_cls, self.reg_dim * self.local_branches], dim=1)
            if self.local_context:
                if local_context_bins is None:
                    raise ValueError('CoupledBBoxHead: context_branch="local" needs local_context_bins')
                local_cls = local_cls + local_context_bins.mean(dim=(2, 3))[:, :num_cls]
            branch_cls += local_cls.split(self.cls_dim, dim=1)
            branch_reg += local_reg.split(self.reg_dim, dim=1)
        if self.with_global:
            if global_feats is None:
                raise ValueError('CoupledBBoxHead: the global branch needs global_feats')
            if tuple(global_feats.shape[-2:]) != (self.group_size, self.group_size):
                raise ValueError(f'CoupledBBoxHead: global RoI features are {tuple(global_feats.shape[-2:])}, '
                                 f'expected {self.group_size}x{self.group_size}; set the RoI layer '
                                 f'output_size to group_size')
            g = self.global_fc(self.global_conv(global_feats))  # (n, global_channels)
            branch_cls.append(self.fc_cls(g))
            branch_reg.append(self.fc_reg(g))
        if not self.coupled:
            return branch_cls[0], branch_reg[0]
        return self._couple(branch_cls, 'cls', roi_labels), self._couple(branch_reg, 'reg')

    def _couple(self, branches: List[Tensor], kind: str, roi_labels: Optional[Tensor] = None) -> Tensor:
        """Normalise each branch's (n, D) output where it applies (:meth:`_normalizes`) and fold them with the
        coupling (associative); inside :meth:`branch_alone` only that branch's output. ``roi_labels``: see
        :meth:`forward`."""
        branches = [self._normalize(out, name, kind) if self._normalizes(name, kind) else out
                    for name, out in zip(self.branch_names, branches)
                    if self._branch_alone in (None, name)]
        coupled = functools.reduce(functools.partial(couple, coupling=self.coupling), branches)
        if kind == 'cls' and self.counting_decisions:
            self._count_decisions(torch.stack(branches).detach(), coupled.detach(), roi_labels)
        return coupled

    def _count_decisions(self, cls_scores: Tensor, coupled: Tensor, roi_labels: Optional[Tensor] = None) -> None:
        """Add n RoIs to :meth:`count_decisions`' counts.

        ``cls_scores``: the (B, n, C+1) normalised class scores of the B
        branches; ``coupled``: their (n, C+1) coupling; ``roi_labels``: the
        RoIs' (n,) true classes, or None.
        """
        top_class = coupled.argmax(dim=1)  # (n,)
        is_object = (top_class != self.num_classes).cpu()  # mmdet's background is the last class
        branch_top = cls_scores.argmax(dim=2)  # (B, n)
        agrees = branch_top == top_class
        bits = 2**torch.arange(agrees.size(0), device=agrees.device)
        column = (agrees.long() * bits[:, None]).sum(dim=0).cpu()
        if roi_labels is not None:
            labelled = self._decisions['labelled']
            object_column = column[is_object]
            labelled += torch.bincount(object_column, minlength=labelled.numel())
            # (1 + B, n) whether the coupled class and each branch's own top class is the true one
            right = (torch.cat([top_class[None], branch_top]) == roi_labels.to(top_class.device)).cpu()
            for row, right_row in zip(self._decisions['correct'], right):
                row += torch.bincount(object_column[right_row[is_object]], minlength=row.numel())
        columns = {'agreement': column}
        if 'max_source' in self._decisions:
            at_top_class = cls_scores[:, torch.arange(top_class.numel(), device=top_class.device), top_class]  # (B, n)
            columns['max_source'] = at_top_class.argmax(dim=0).cpu()  # the first branch on a tie
        for key, col in columns.items():
            counts = self._decisions[key]
            counts[0] += torch.bincount(col, minlength=counts.size(1))
            counts[1] += torch.bincount(col[is_object], minlength=counts.size(1))

    def _normalize(self, out: Tensor, branch: str, kind: str) -> Tensor:
        """``branch``'s (n, D) ``kind`` output, normalised ('l2' or 'conv'): (n, D)."""
        if self.normalization == 'l2':
            return F.normalize(out, dim=1)
        return getattr(self, f'{branch}_{kind}_scale')(out)
