"""RoI feature extraction for the two ACoupleNet branches, on ``torchvision.ops``.

* :class:`TorchvisionRoIExtractor`: mmdet's :class:`SingleRoIExtractor` with
  torchvision's RoI layers, which all have CPU and CUDA kernels (mmcv's
  ``RoIPool`` has no CPU kernel, and its CPU ``RoIAlign`` backward is ~20x
  slower than torchvision's ``RoIPool``). The global branch uses it with
  ``RoIPool``, the paper's RoI pooling, which on the CPU runs as
  :class:`RangeMaxRoIPool` (torchvision's CPU kernel is a single-threaded
  loop over every cell of every bin: 0.9 s for 300 context RoIs on a
  1024-channel map at 600 x 1000, a third of R-FCN's whole inference);
  ``RoIAlign`` runs as :class:`GatherRoIAlign` on the CPU (torchvision's CPU
  backward is a single-threaded loop over every sample).
* :class:`PSRoIExtractor`: position-sensitive RoI pooling (R-FCN) for the local
  branch (mmcv has no PS pooling), with mmdet's multi-level mapping;
  torchvision's single-threaded CPU kernels run on chunks of the RoIs in
  parallel threads at inference (:func:`pool_in_threads`).
* :func:`context_rois`: the global branch's context region, the proposal
  scaled about its centre and clipped to its image. mmdet's
  ``roi_scale_factor`` cannot be used for this: ``SingleRoIExtractor`` ignores
  it when there is a single feature level (the C4 case), and no extractor
  clips the scaled box.
* :func:`pool_roi_sets`: proposals and context regions pooled in one call,
  their features side by side along the channels, channels-last: the order in
  which :class:`CoupledBBoxHead`'s k x k conv (a channels-last weight) reads
  them, which :class:`RangeMaxRoIPool` and :class:`GatherRoIAlign` write
  without a copy (and the latter's backward reads without one).
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair
from torchvision.ops import PSRoIAlign, PSRoIPool, RoIAlign, RoIPool

from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptMultiConfig


def pool_in_threads(layer: Callable[[Tensor, Tensor], Tensor], input: Tensor, rois: Tensor,
                    min_rois_per_thread: int = 32) -> Tensor:
    """``layer(input, rois)``, split by RoIs over torch's CPU threads at inference.

    torchvision's CPU kernels for position-sensitive pooling loop over the
    RoIs on one thread (and release the GIL): the 300 RoIs of R-101 R-FCN
    over its 4165 maps at 600 x 1000 take 86 ms on one of two cores, 45 ms
    in two threads (2026-12-04, AMD EPYC). Every RoI's bins are computed
    alone, so the result is the single call's, bit for bit. Where autograd
    records (training), on other devices, for dtypes other than float32 and
    float64 (autocast's casts are per thread), or with fewer than
    ``2 * min_rois_per_thread`` RoIs, ``layer`` runs once as it is.

    Args:
        layer: A RoI layer's forward, ``(N, C, H, W) map, (R, 5) RoIs -> (R, ...)``.
        input (Tensor): (N, C, H, W) map.
        rois (Tensor): (R, 5) ``(batch_index, x1, y1, x2, y2)``.
        min_rois_per_thread (int): Fewest RoIs worth a thread of their own.
    """
    threads = min(torch.get_num_threads(), rois.size(0) // min_rois_per_thread)
    if (threads < 2 or input.device.type != 'cpu' or input.dtype not in (torch.float32, torch.float64)
            or (torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad))):
        return layer(input, rois)
    # Grad and inference mode are per thread: the workers take the caller's.
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def pool_chunk(chunk: Tensor) -> Tensor:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return layer(input, chunk)

    chunks = rois.tensor_split(threads)
    # A pool per call: no thread outlives it, so a fork (data loader workers) never copies a busy pool.
    with ThreadPoolExecutor(threads - 1) as workers:
        rest = [workers.submit(pool_chunk, chunk) for chunk in chunks[1:]]
        first = layer(input, chunks[0])
        return torch.cat([first] + [future.result() for future in rest])


class RoIThreads:
    """Mixin for a torchvision RoI layer: its single-threaded CPU kernel runs in :func:`pool_in_threads`."""

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return pool_in_threads(super().forward, input, rois)


class ThreadedPSRoIAlign(RoIThreads, PSRoIAlign):
    """torchvision's ``PSRoIAlign``, over the CPU's threads at inference (:func:`pool_in_threads`)."""


class BorderSafePSRoIPool(RoIThreads, PSRoIPool):
    """torchvision's ``PSRoIPool`` with its border bug worked around.

    torchvision's CPU forward clips bin ends to ``H - 1`` / ``W - 1`` (so the
    last row and column of the map are never pooled) while its backward clips
    to ``H`` / ``W``. One zero row and column padded at the bottom/right, and
    RoIs clamped to the map, give the R-FCN definition in both directions:
    every bin averages the map cells it covers. Runs over the CPU's threads
    at inference (:func:`pool_in_threads`).
    """

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        height, width = input.shape[-2:]
        limits = rois.new_tensor([width, height, width, height]) / self.spatial_scale
        boxes = torch.minimum(rois[:, 1:].clamp(min=0), limits)
        rois = torch.cat([rois[:, :1], boxes], dim=1)
        return super().forward(F.pad(input, (0, 1, 0, 1)), rois)


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round()``, which torchvision's kernels use (``torch.round`` rounds half to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class RoISets:
    """Mixin for a torchvision RoI layer with a CPU path of its own (``_pool_sets``) that pools several
    equal sets of RoIs in one call and writes them side by side, as :func:`pool_roi_sets` asks: the set
    checks, torchvision's kernel where the layer's own path does not apply (``_takes_own_path``) and calls
    without RoIs, in one place for :class:`RangeMaxRoIPool` and :class:`GatherRoIAlign`."""

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]], groups: int = 1) -> Tensor:
        """Pool (R, 5) ``(batch_index, x1, y1, x2, y2)`` RoIs (or torchvision's per-image list of
        (R_i, 4) boxes, which its kernel pools) from an (N, C, H, W) map.

        Args:
            groups (int): ``rois`` holds this many equal-sized sets of ``n = R / groups``
                RoIs, one after the other (e.g. the proposals, then their context regions).

        Returns:
            Tensor: (n, groups * C, kh, kw), RoI ``i`` of every set concatenated along
            the channels (set 0 first), channels-last in memory (the order in which
            CoupledBBoxHead reads them): the layer's own path writes each bin's channel
            vector in place, so no concatenation copies them again; torchvision's kernel
            returns its own layout for one set and :func:`concat_roi_sets`' for several.
        """
        num_rois = rois.size(0) if isinstance(rois, Tensor) else sum(len(r) for r in rois)
        if num_rois % groups:
            raise ValueError(f'{type(self).__name__}: {num_rois} RoIs do not split into {groups} equal sets')
        if not (isinstance(rois, Tensor) and self._takes_own_path(input)):
            pooled = super().forward(input, rois)
            return pooled if groups == 1 else concat_roi_sets(pooled, groups)
        if num_rois == 0:
            return input.new_zeros(0, groups * input.size(1), *_pair(self.output_size))
        return self._pool_sets(input, rois, groups)


class RangeMaxRoIPool(RoISets, RoIPool):
    """Fast R-CNN RoI max pooling, equal to torchvision's ``RoIPool``, fast on the CPU.

    Same bins as torchvision (RoI corners rounded to the map, malformed RoIs
    forced to 1 x 1, bins clipped to the map, empty bins 0), but each bin's
    maximum is a range-maximum query: a bin of ``h x w`` cells is covered by
    four (overlapping) windows of ``2^a x 2^b`` cells (``2^a <= h < 2^(a+1)``),
    whose maxima come from a table of all such windows built by doubling (one
    element-wise maximum of the map per level, vectorised over channels). So
    the work is a few passes over the map plus four channel-vector gathers per
    bin, independent of the RoI sizes (a sparse table for range maxima).

    It serves inference on the CPU. Where autograd records (training) and on
    CUDA, torchvision's kernel runs: its argmax backward is far cheaper than
    that of the gathers (4x on the shapes configs' training step), and its
    CUDA kernel is parallel.
    """

    bins_per_chunk = 256

    def _takes_own_path(self, input: Tensor) -> bool:
        return not input.is_cuda and not (torch.is_grad_enabled() and input.requires_grad)

    def _pool_sets(self, input: Tensor, rois: Tensor, groups: int) -> Tensor:
        """(R, 5) RoIs of ``groups`` sets, R > 0, from an (N, C, H, W) CPU map: see :meth:`RoISets.forward`."""
        num_rois = rois.size(0)
        num_imgs, channels, height, width = input.shape
        pooled_h, pooled_w = _pair(self.output_size)
        rois = rois.to(input.dtype)
        # torchvision computes the bins in the input's floating type.
        corners = _round_half_away(rois[:, 1:] * self.spatial_scale).long()
        batch_inds = rois[:, 0].long()

        def bin_edges(start, end, pooled, size):
            """(R, pooled) first and one-past-last cell of each bin along one axis, clipped to the map."""
            roi_size = (end - start + 1).clamp(min=1).to(input.dtype)
            bin_size = (roi_size / pooled)[:, None]
            steps = torch.arange(pooled, dtype=input.dtype, device=input.device)
            first = torch.floor(steps * bin_size).long() + start[:, None]
            last = torch.ceil((steps + 1) * bin_size).long() + start[:, None]
            return first.clamp(0, size), last.clamp(0, size)

        h_first, h_last = bin_edges(corners[:, 1], corners[:, 3], pooled_h, height)
        w_first, w_last = bin_edges(corners[:, 0], corners[:, 2], pooled_w, width)
        # Every bin as a row: (R * kh * kw,) in (roi, row, column) order.
        shape = (num_rois, pooled_h, pooled_w)
        y0, y1 = (t[:, :, None].expand(shape).reshape(-1) for t in (h_first, h_last))
        x0, x1 = (t[:, None, :].expand(shape).reshape(-1) for t in (w_first, w_last))
        batch = batch_inds[:, None].expand(num_rois, pooled_h * pooled_w).reshape(-1)
        bin_h, bin_w = y1 - y0, x1 - x0
        # The output row of each bin: bin b of RoI i of set g goes to row (i * kh * kw + b) * groups + g,
        # so that the (n, kh, kw, groups * C) output holds the sets side by side.
        bins = torch.arange(y0.numel(), device=input.device)
        set_bins = y0.numel() // groups
        out_rows = (bins % set_bins) * groups + torch.div(bins, set_bins, rounding_mode='floor')
        filled = ((bin_h > 0) & (bin_w > 0)).nonzero(as_tuple=True)[0]
        # floor(log2(size)): the largest power-of-two window that fits in the bin.
        level_h = torch.floor(torch.log2(bin_h[filled].double())).long()
        level_w = torch.floor(torch.log2(bin_w[filled].double())).long()
        # Windows of 2^a x 2^b cells by doubling, channels last: table[a][b] is (N, H-2^a+1, W-2^b+1, C).
        # In-place copies into a fresh tensor keep autograd (and save a gather); empty bins are 0.
        pooled = input.new_empty(num_rois * pooled_h * pooled_w, channels)
        pooled.index_fill_(0, out_rows[((bin_h <= 0) | (bin_w <= 0)).nonzero(as_tuple=True)[0]], 0)
        rows = input.permute(0, 2, 3, 1).contiguous()
        chunk = input.new_empty(self.bins_per_chunk, channels)
        for a in range(int(level_h.max()) + 1 if filled.numel() else 0):
            if a > 0:
                step = 2**(a - 1)
                rows = torch.maximum(rows[:, :-step], rows[:, step:])
            table = rows
            for b in range(int(level_w[level_h == a].max()) + 1 if (level_h == a).any() else 0):
                if b > 0:
                    step = 2**(b - 1)
                    table = torch.maximum(table[:, :, :-step], table[:, :, step:])
                idx = filled[(level_h == a) & (level_w == b)]
                if idx.numel() == 0:
                    continue
                table_h, table_w = table.shape[1:3]
                flat = table.reshape(-1, channels)  # one channel vector per window
                base = batch[idx] * (table_h * table_w)
                top, bottom = y0[idx], y1[idx] - 2**a
                left, right = x0[idx], x1[idx] - 2**b
                windows = torch.stack([top * table_w + left, top * table_w + right, bottom * table_w + left,
                                       bottom * table_w + right]) + base
                # In chunks whose four gathered windows stay in the cache: gathering all of them first
                # writes and reads back 4x the output through memory (3x slower at 600 x 1000).
                for start in range(0, idx.numel(), self.bins_per_chunk):
                    end = min(start + self.bins_per_chunk, idx.numel())
                    gathered = flat.index_select(0, windows[:, start:end].reshape(-1)).view(4, -1, channels)
                    pooled.index_copy_(0, out_rows[idx[start:end]],
                                       torch.amax(gathered, 0, out=chunk[:end - start]))
        # A channels-last view: CoupledBBoxHead reads it in this order (its k x k conv weight is
        # channels-last), so a contiguous copy would be a second pass over the output.
        return pooled.view(num_rois // groups, pooled_h, pooled_w, groups * channels).permute(0, 3, 1, 2)


class _WeightedGather(torch.autograd.Function):
    """``out[b] = sum_t weights[b, t] * table[cells[b, t]]`` for (B, T) taps into an (M, C) table.

    The forward is ``F.embedding_bag``. The backward is the transposed gather:
    the taps are grouped by the table row they read (one sort) and each row's
    gradient is an embedding bag over the output gradients, faster on the
    CPU than embedding_bag's own backward for RoIAlign's 16 taps per bin, and
    summed in a fixed order.

    With ``groups`` > 1 the B bags are ``groups`` equal sets one after the
    other (bag ``g * m + i``, ``m = B / groups``) and the output interleaves
    them, bag ``(g, i)`` at row ``i * groups + g``: the RoI sets side by side.
    Each row's gradient sums its taps in the order of ``groups=1``, so the two
    agree bit for bit.
    """

    @staticmethod
    def forward(ctx, table: Tensor, cells: Tensor, weights: Tensor, groups: int = 1) -> Tensor:
        ctx.save_for_backward(cells, weights)
        ctx.num_rows, ctx.groups = table.size(0), groups

        def interleaved(taps: Tensor) -> Tensor:  # (groups * m, T) -> (m * groups, T), a copy of the taps
            return taps.view(groups, -1, taps.size(1)).transpose(0, 1).reshape(taps.shape)

        if groups > 1:
            cells, weights = interleaved(cells), interleaved(weights)
        return F.embedding_bag(cells, table, per_sample_weights=weights, mode='sum')

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        cells, weights = ctx.saved_tensors
        flat_cells = cells.reshape(-1)
        order = torch.argsort(flat_cells, stable=True)
        bins = torch.div(order, cells.size(1), rounding_mode='floor')
        if ctx.groups > 1:  # bag g * m + i is output row i * groups + g
            set_bins = cells.size(0) // ctx.groups
            bins = (bins % set_bins) * ctx.groups + torch.div(bins, set_bins, rounding_mode='floor')
        taps_per_row = torch.bincount(flat_cells, minlength=ctx.num_rows)
        offsets = torch.cumsum(taps_per_row, 0) - taps_per_row
        grad_table = F.embedding_bag(bins, grad_out, offsets, per_sample_weights=weights.reshape(-1)[order],
                                     mode='sum')
        return grad_table, None, None, None


class GatherRoIAlign(RoISets, RoIAlign):
    """torchvision's ``RoIAlign``, equal bin for bin, fast on the CPU with autograd.

    RoIAlign is linear in the feature map: every output bin is a weighted sum
    of the map cells under the bilinear corners of its sampling points. On the
    CPU this layer computes those cells and weights (torchvision's sampling
    grid, adaptive ``sampling_ratio <= 0`` included, its border rules and its
    averaging) and sums them as a weighted gather over the channels-last
    map (:class:`_WeightedGather`), whose backward is a gather too, not
    torchvision's single-threaded per-sample scatter: 6.7x faster forward plus
    backward on the shapes configs' 1024 training RoIs
    (``tools/benchmark_roi_layers.py``), where torchvision's backward was the
    largest part of a global-only training step. It pools the proposals and
    their context regions in one call (``groups=2``), writing them side by
    side as the head reads them: no copy forward or backward, 1-6% off a
    training step of the shapes configs (paired medians of 0.94-0.99x
    against pooling, then concatenating; the same weights bit for bit).
    CUDA, and dtypes other than float32/float64, take torchvision's kernel.
    """

    def _takes_own_path(self, input: Tensor) -> bool:
        return not input.is_cuda and input.dtype in (torch.float32, torch.float64)

    def _pool_sets(self, input: Tensor, rois: Tensor, groups: int) -> Tensor:
        """(R, 5) RoIs of ``groups`` sets, R > 0, from an (N, C, H, W) CPU map: see :meth:`RoISets.forward`."""
        num_rois = rois.size(0)
        num_imgs, channels, height, width = input.shape
        pooled_h, pooled_w = _pair(self.output_size)
        cells, weights = self._bilinear_taps(rois.to(input.dtype), height, width, pooled_h, pooled_w)
        table = input.permute(0, 2, 3, 1).reshape(num_imgs * height * width, channels)
        pooled = _WeightedGather.apply(table, cells, weights, groups)
        return pooled.view(num_rois // groups, pooled_h, pooled_w, groups * channels).permute(0, 3, 1, 2)

    def _bilinear_taps(self, rois: Tensor, height: int, width: int, pooled_h: int,
                       pooled_w: int) -> Tuple[Tensor, Tensor]:
        """Map cells and weights of every bin: two (R * kh * kw, T) tensors.

        ``cells`` index the (N * H * W) flattened map; ``weights`` already hold
        the 1 / (samples per bin) average and are 0 for padding taps (bins with
        fewer adaptive samples than the largest, samples off the map). The
        sample positions follow torchvision's ``roi_align`` kernel step by
        step, in the input's dtype. Bilinear weights, validity and the average
        all factor into a row and a column part, so each axis is computed on
        its own and the taps are one broadcast of the two (results agree with
        torchvision's to rounding).
        """
        dtype, device = rois.dtype, rois.device
        offset = 0.5 if self.aligned else 0.0
        start_x, start_y, end_x, end_y = (rois[:, i] * self.spatial_scale - offset for i in range(1, 5))
        roi_w, roi_h = end_x - start_x, end_y - start_y
        if not self.aligned:  # torchvision forces malformed RoIs to 1 x 1 only when not aligned
            roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
        bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
        if self.sampling_ratio > 0:
            grid_h = grid_w = torch.full_like(roi_h, self.sampling_ratio, dtype=torch.long)
        else:  # adaptive: ceil(roi_size / pooled_size) samples per bin and axis, per RoI
            grid_h, grid_w = torch.ceil(roi_h / pooled_h).long(), torch.ceil(roi_w / pooled_w).long()

        def axis(start, bin_size, grid, pooled, size):
            """(R, pooled, G, 2) cells and weights along one axis: each sample's low and high neighbour."""
            max_grid = max(int(grid.max()), 1)
            samples = grid.clamp(min=1).to(dtype)[:, None, None]
            steps = torch.arange(max_grid, device=device, dtype=dtype)
            bins = torch.arange(pooled, device=device, dtype=dtype)
            pos = (start[:, None, None] + bins[None, :, None] * bin_size[:, None, None] +
                   (steps + 0.5)[None, None, :] * bin_size[:, None, None] / samples)
            used = (steps[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
            pos = pos.clamp(min=0)
            low = pos.floor().long()
            at_end = low >= size - 1  # torchvision: both neighbours are the last cell
            low = low.clamp(max=size - 1)
            high = torch.where(at_end, low, low + 1)
            frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
            # Unused samples keep valid (clamped) cells and get weight 0; 1 / samples is this axis's
            # share of torchvision's 1 / (grid_h * grid_w).
            weight = used.to(dtype) / samples
            return torch.stack([low, high], -1), torch.stack([(1 - frac) * weight, frac * weight], -1)

        y_cells, y_weights = axis(start_y, bin_h, grid_h, pooled_h, height)
        x_cells, x_weights = axis(start_x, bin_w, grid_w, pooled_w, width)
        # Rows (R, kh, Gy, 2) and columns (R, kw, Gx, 2) broadcast to (R, kh, kw, Gy, Gx, 2, 2) taps.
        row_cells = (rois[:, 0].long() * height)[:, None, None, None] + y_cells
        cells = row_cells[:, :, None, :, None, :, None] * width + x_cells[:, None, :, None, :, None, :]
        weights = y_weights[:, :, None, :, None, :, None] * x_weights[:, None, :, None, :, None, :]
        num_bins = rois.size(0) * pooled_h * pooled_w
        return cells.reshape(num_bins, -1), weights.reshape(num_bins, -1)


def concat_roi_sets(pooled: Tensor, groups: int) -> Tensor:
    """(groups * n, C, kh, kw) features of ``groups`` RoI sets -> (n, groups * C, kh, kw), channels-last.

    RoI ``i`` of every set concatenated along the channels (set 0 first), the
    layout :class:`RangeMaxRoIPool` and :class:`GatherRoIAlign` write
    directly: one copy, whatever the input's memory layout.
    """
    if pooled.size(0) % groups:
        raise ValueError(f'concat_roi_sets: {pooled.size(0)} pooled RoIs do not split into {groups} equal sets')
    channels, kh, kw = pooled.shape[1:]
    n = pooled.size(0) // groups
    rows = pooled.reshape(groups, n, channels, kh, kw).permute(1, 3, 4, 0, 2).reshape(n, kh, kw, groups * channels)
    return rows.permute(0, 3, 1, 2)


PS_ROI_LAYERS = {'PSRoIPool': BorderSafePSRoIPool, 'PSRoIAlign': ThreadedPSRoIAlign}
ROI_LAYERS = {'RoIPool': RangeMaxRoIPool, 'RoIAlign': GatherRoIAlign, **PS_ROI_LAYERS}
# Keyword arguments each torchvision layer takes besides spatial_scale.
_LAYER_ARGS = {'RoIPool': {'output_size'}, 'RoIAlign': {'output_size', 'sampling_ratio', 'aligned'},
               'PSRoIPool': {'output_size'}, 'PSRoIAlign': {'output_size', 'sampling_ratio'}}


@MODELS.register_module()
class TorchvisionRoIExtractor(SingleRoIExtractor):
    """:class:`SingleRoIExtractor` with torchvision's RoI layers.

    Args:
        roi_layer (dict): ``type`` one of 'RoIPool' (Fast R-CNN max pooling),
            'RoIAlign', 'PSRoIPool', 'PSRoIAlign', with that layer's
            arguments (``output_size``; ``sampling_ratio`` and ``aligned``
            where the layer has them; RoIAlign defaults to mmcv's
            ``sampling_ratio=0``, ``aligned=True``).
        out_channels (int): Output channels.
        featmap_strides (list[int]): Stride of each input level.
    """

    layer_types = ROI_LAYERS

    def build_roi_layers(self, layer_cfg: ConfigType, featmap_strides: List[int]) -> nn.ModuleList:
        cfg = dict(layer_cfg)
        layer_type = cfg.pop('type', None)
        name = type(self).__name__
        if layer_type not in self.layer_types:
            raise ValueError(f'{name}: roi_layer type {layer_type!r} is not supported; '
                             f'use one of {tuple(self.layer_types)}')
        if 'output_size' not in cfg:
            raise ValueError(f'{name}: roi_layer needs output_size (e.g. 7)')
        unknown = set(cfg) - _LAYER_ARGS[layer_type]
        if unknown:
            raise ValueError(f'{name}: unknown roi_layer keys {sorted(unknown)} for {layer_type}; it takes '
                             f'{sorted(_LAYER_ARGS[layer_type])}')
        cfg['output_size'] = _pair(cfg['output_size'])
        if layer_type == 'RoIAlign':
            # mmcv's defaults, so that an mmdet roi_layer dict means the same with this extractor.
            cfg.setdefault('sampling_ratio', 0)
            cfg.setdefault('aligned', True)
        if layer_type == 'PSRoIAlign':
            cfg.setdefault('sampling_ratio', 2)
            # Adaptive sampling (<= 0) takes ceil(roi_size / k) samples per bin: zero samples, and a
            # 0/0 NaN, for a zero-size RoI.
            if not isinstance(cfg['sampling_ratio'], int) or cfg['sampling_ratio'] < 1:
                raise ValueError(f'{name}: sampling_ratio={cfg["sampling_ratio"]!r} must be a '
                                 f'positive int (adaptive sampling gives NaN on zero-size RoIs)')
        return nn.ModuleList([self.layer_types[layer_type](spatial_scale=1. / s, **cfg) for s in featmap_strides])

    def forward(self, feats: Sequence[Tensor], rois: Tensor, roi_scale_factor: Optional[float] = None) -> Tensor:
        """Pool (n, 5) RoIs ``(batch_index, x1, y1, x2, y2)`` from one (N, C, H, W) map per level.

        With one level (the C4 case) this is the RoI layer's output, (n, C, kh, kw): mmdet's
        ``SingleRoIExtractor`` first allocates and zero-fills a tensor of that size which it then
        discards (52 ms of R-101 CoupleNet's 1.9 s RoI head at 600 x 1000 on 2 CPU cores) and drops
        ``roi_scale_factor``, which is applied here as with several levels.
        """
        if len(feats) != 1:
            return super().forward(feats, rois, roi_scale_factor)
        rois = rois.type_as(feats[0])
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        return self.roi_layers[0](feats[0], rois)


@MODELS.register_module()
class PSRoIExtractor(TorchvisionRoIExtractor):
    """Position-sensitive RoI pooling.

    Channel layout of the input maps (the R-FCN layout, torchvision's): for
    ``k x k`` bins and ``C_out`` output channels the input has ``k*k*C_out``
    channels, and input channel ``(c * k + i) * k + j`` holds output channel
    ``c`` for the bin in row ``i``, column ``j``. So the ``k*k`` maps of one
    class are contiguous, in row-major bin order.

    Output: (n, C_out, k, k), bin (i, j) of channel ``c`` averaged from its own
    input channel only.

    Args:
        roi_layer (dict): ``dict(type='PSRoIPool', output_size=7)`` (R-FCN's
            quantised average pooling) or ``dict(type='PSRoIAlign',
            output_size=7, sampling_ratio=2)`` (bilinear sampling).
        featmap_strides (list[int]): Stride of each input level.
        out_channels (int, optional): ``C_out``; when given, inputs are checked
            against it, otherwise it follows from the input channels.
        finest_scale (int): Level mapping scale, as in ``SingleRoIExtractor``.
    """

    layer_types = PS_ROI_LAYERS

    def __init__(self, roi_layer: ConfigType = dict(type='PSRoIPool', output_size=7),
                 featmap_strides: List[int] = (16, ), out_channels: Optional[int] = None,
                 finest_scale: int = 56, init_cfg: OptMultiConfig = None) -> None:
        super().__init__(roi_layer=roi_layer, out_channels=out_channels, featmap_strides=list(featmap_strides),
                         finest_scale=finest_scale, init_cfg=init_cfg)

    @property
    def output_size(self) -> Tuple[int, int]:
        return self.roi_layers[0].output_size

    def forward(self, feats: Sequence[Tensor], rois: Tensor, roi_scale_factor: Optional[float] = None) -> Tensor:
        """Pool position-sensitive score maps.

        Args:
            feats: One (N, k*k*C_out, H, W) map per level.
            rois: (n, 5) RoIs ``(batch_index, x1, y1, x2, y2)`` in input pixels.
            roi_scale_factor: Optional scaling of the RoIs about their centres.

        Returns:
            Tensor: (n, C_out, k, k).
        """
        kh, kw = self.output_size
        channels = feats[0].size(1)
        if channels % (kh * kw) != 0:
            raise ValueError(f'PSRoIExtractor: input has {channels} channels, not a multiple of the '
                             f'{kh}x{kw} bins; the map conv must output k*k*C_out channels')
        out_channels = channels // (kh * kw)
        if self.out_channels is not None and out_channels != self.out_channels:
            raise ValueError(f'PSRoIExtractor: input has {channels} channels = {kh}x{kw} bins x '
                             f'{out_channels}, but out_channels={self.out_channels}')
        # x2 < x1 (a degenerate box) would sample the bins in reverse order.
        rois = rois.type_as(feats[0])
        rois = torch.cat([rois[:, :3], torch.maximum(rois[:, 3:5], rois[:, 1:3])], dim=1)
        if len(feats) == 1:
            return super().forward(feats, rois, roi_scale_factor)
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        # Several levels: each RoI is pooled from the level SingleRoIExtractor maps it to.
        target_lvls = self.map_roi_levels(rois, len(feats))
        roi_feats = feats[0].new_zeros(rois.size(0), out_channels, kh, kw)
        for level, (feat, roi_layer) in enumerate(zip(feats, self.roi_layers)):
            inds = (target_lvls == level).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() > 0:
                roi_feats[inds] = roi_layer(feat, rois[inds])
            else:
                # Keep every level in the graph so that DDP sees the same parameters used on all ranks.
                roi_feats = roi_feats + feat.sum() * 0.
        return roi_feats


def context_rois(rois: Tensor, img_sizes: Tensor, scale: float = 2.0) -> Tensor:
    """Context regions: each RoI scaled about its centre, clipped to its image.

    Args:
        rois (Tensor): (n, 5) ``(batch_index, x1, y1, x2, y2)``.
        img_sizes (Tensor): (N, 2) ``(height, width)`` of each image (before
            batch padding), indexed by ``batch_index``.
        scale (float): Side scale; 2.0 doubles width and height.

    Returns:
        Tensor: (n, 5) context RoIs with ``0 <= x <= width`` and
        ``0 <= y <= height`` of their image.
    """
    if rois.numel() == 0:
        return rois.clone()
    img_sizes = img_sizes.to(rois)
    size = img_sizes[rois[:, 0].long()]
    height, width = size[:, 0], size[:, 1]
    cx = (rois[:, 1] + rois[:, 3]) * 0.5
    cy = (rois[:, 2] + rois[:, 4]) * 0.5
    half_w = (rois[:, 3] - rois[:, 1]).abs() * (0.5 * scale)
    half_h = (rois[:, 4] - rois[:, 2]).abs() * (0.5 * scale)
    zero = torch.zeros_like(cx)
    x1 = torch.minimum(torch.maximum(cx - half_w, zero), width)
    x2 = torch.minimum(torch.maximum(cx + half_w, zero), width)
    y1 = torch.minimum(torch.maximum(cy - half_h, zero), height)
    y2 = torch.minimum(torch.maximum(cy + half_h, zero), height)
    return torch.stack([rois[:, 0], x1, y1, x2, y2], dim=1)


def pool_roi_sets(extractor: nn.Module, feat: Tensor, roi_sets: Sequence[Tensor]) -> Tensor:
    """Pool several (n, 5) RoI sets from one (N, C, H, W) map: (n, len(roi_sets) * C, kh, kw), channels-last.

    One pooling call for all sets (:class:`RangeMaxRoIPool` builds its tables
    once), their features concatenated along the channels as
    :func:`concat_roi_sets` does, which the project's CPU layers do as they
    pool; ``extractor`` may be any mmdet RoI extractor.
    """
    rois = torch.cat(list(roi_sets))
    layers = getattr(extractor, 'roi_layers', ())
    if isinstance(extractor, TorchvisionRoIExtractor) and len(layers) == 1 and isinstance(layers[0], RoISets):
        return layers[0](feat, rois.type_as(feat), groups=len(roi_sets))
    return concat_roi_sets(extractor((feat, ), rois), len(roi_sets))
