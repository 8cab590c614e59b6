"""RoI extractors against plain-loop references: R-FCN's position-sensitive pooling and Fast R-CNN's
RoI max pooling; the CPU RoI layers against torchvision's and mmcv's kernels."""
import math
import threading

import pytest
import torch
import torchvision

from torchvision.ops import roi_align, roi_pool

from projects.acouplenet import PSRoIExtractor, TorchvisionRoIExtractor
from projects.acouplenet.roi_extractors import GatherRoIAlign, RangeMaxRoIPool


def _round(v):  # C's round(): half away from zero (rois here are non-negative)
    return math.floor(v + 0.5)


def ps_roi_pool_reference(feat, rois, k, scale):
    """Average of the map cells each bin covers, from the bin's own channel (R-FCN)."""
    n_rois, (_, channels, height, width) = len(rois), feat.shape
    out = torch.zeros(n_rois, channels // (k * k), k, k, dtype=feat.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        start_w, start_h = _round(x1 * scale), _round(y1 * scale)
        roi_w = max(_round(x2 * scale) - start_w, 1)
        roi_h = max(_round(y2 * scale) - start_h, 1)
        for c in range(channels // (k * k)):
            for i in range(k):
                for j in range(k):
                    hs = min(max(math.floor(i * roi_h / k) + start_h, 0), height)
                    he = min(max(math.ceil((i + 1) * roi_h / k) + start_h, 0), height)
                    ws = min(max(math.floor(j * roi_w / k) + start_w, 0), width)
                    we = min(max(math.ceil((j + 1) * roi_w / k) + start_w, 0), width)
                    if he > hs and we > ws:
                        out[r, c, i, j] = feat[int(b), (c * k + i) * k + j, hs:he, ws:we].mean()
    return out


def _bilinear(img, y, x):
    height, width = img.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * img[y0, x0] + (1 - ly) * lx * img[y0, x1] + ly * (1 - lx) * img[y1, x0]
            + ly * lx * img[y1, x1])


def ps_roi_align_reference(feat, rois, k, scale, sampling_ratio):
    """Mean of sampling_ratio^2 bilinear samples per bin, from the bin's own channel (half-pixel aligned)."""
    n_rois, channels = len(rois), feat.shape[1]
    out = torch.zeros(n_rois, channels // (k * k), k, k, dtype=feat.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh = x1 * scale - 0.5, y1 * scale - 0.5
        bw, bh = (x2 * scale - 0.5 - sw) / k, (y2 * scale - 0.5 - sh) / k
        for c in range(channels // (k * k)):
            for i in range(k):
                for j in range(k):
                    img = feat[int(b), (c * k + i) * k + j]
                    total = 0.0
                    for iy in range(sampling_ratio):
                        for ix in range(sampling_ratio):
                            total += _bilinear(img, sh + i * bh + (iy + 0.5) * bh / sampling_ratio,
                                               sw + j * bw + (ix + 0.5) * bw / sampling_ratio)
                    out[r, c, i, j] = total / sampling_ratio**2
    return out


def _rois_inside(num, height, width, stride, gen):
    """Random RoIs inside a (height, width) map of the given stride, a few degenerate."""
    x1 = torch.rand(num, generator=gen, dtype=torch.float64) * width * stride * 0.8
    y1 = torch.rand(num, generator=gen, dtype=torch.float64) * height * stride * 0.8
    x2 = torch.minimum(x1 + torch.rand(num, generator=gen, dtype=torch.float64) * width * stride,
                       torch.tensor(width * stride - 1.0))
    y2 = torch.minimum(y1 + torch.rand(num, generator=gen, dtype=torch.float64) * height * stride,
                       torch.tensor(height * stride - 1.0))
    x2[0], y2[0] = x1[0], y1[0]  # a zero-size RoI
    batch = torch.randint(0, 2, (num, ), generator=gen).double()
    return torch.stack([batch, x1, y1, x2, y2], dim=1)


@pytest.mark.parametrize('k', [1, 2, 3])
def test_ps_roi_pool_matches_reference(k):
    gen = torch.Generator().manual_seed(k)
    feat = torch.randn(2, k * k * 3, 9, 11, generator=gen, dtype=torch.float64)
    rois = _rois_inside(12, 9, 11, 4, gen)
    extractor = PSRoIExtractor(roi_layer=dict(type='PSRoIPool', output_size=k), featmap_strides=[4])
    out = extractor((feat, ), rois)
    assert out.shape == (12, 3, k, k)
    torch.testing.assert_close(out, ps_roi_pool_reference(feat, rois, k, 0.25))


def test_ps_roi_pool_includes_last_row_and_column():
    # torchvision's own CPU kernel drops them; the extractor must not.
    feat = torch.arange(4 * 16, dtype=torch.float64).reshape(1, 4, 4, 4)
    extractor = PSRoIExtractor(roi_layer=dict(type='PSRoIPool', output_size=2), featmap_strides=[1])
    out = extractor((feat, ), torch.tensor([[0., 0., 0., 4., 4.]], dtype=torch.float64))
    expected = torch.tensor([[feat[0, 0, :2, :2].mean(), feat[0, 1, :2, 2:].mean()],
                             [feat[0, 2, 2:, :2].mean(), feat[0, 3, 2:, 2:].mean()]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize('sampling_ratio', [1, 2])
def test_ps_roi_align_matches_reference(sampling_ratio):
    gen = torch.Generator().manual_seed(7)
    k = 3
    feat = torch.randn(2, k * k * 2, 8, 10, generator=gen, dtype=torch.float64)
    rois = _rois_inside(10, 8, 10, 8, gen)
    extractor = PSRoIExtractor(roi_layer=dict(type='PSRoIAlign', output_size=k, sampling_ratio=sampling_ratio),
                               featmap_strides=[8])
    out = extractor((feat, ), rois)
    torch.testing.assert_close(out, ps_roi_align_reference(feat, rois, k, 1 / 8, sampling_ratio))


@pytest.mark.parametrize('mode', ['PSRoIPool', 'PSRoIAlign'])
def test_channel_layout(mode):
    """Input channel (c*k + i)*k + j feeds bin (i, j) of output channel c."""
    k, c_out = 3, 4
    channel_ids = torch.arange(k * k * c_out, dtype=torch.float32)
    feat = channel_ids.view(1, -1, 1, 1).expand(1, k * k * c_out, 12, 12).contiguous()
    extractor = PSRoIExtractor(roi_layer=dict(type=mode, output_size=k), featmap_strides=[1])
    out = extractor((feat, ), torch.tensor([[0., 1., 1., 10., 10.]]))
    expected = torch.tensor([[[(c * k + i) * k + j for j in range(k)] for i in range(k)] for c in range(c_out)],
                            dtype=torch.float32)
    torch.testing.assert_close(out[0], expected)


@pytest.mark.parametrize('layer', [dict(type='PSRoIPool', output_size=2),
                                   dict(type='PSRoIAlign', output_size=2, sampling_ratio=2)])
def test_gradients_match_finite_differences(layer):
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 2 * 2 * 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _rois_inside(5, 6, 7, 2, gen)
    extractor = PSRoIExtractor(roi_layer=layer, featmap_strides=[2])
    assert torch.autograd.gradcheck(lambda f: extractor((f, ), rois), (feat, ))


def test_multi_level_maps_rois_like_single_roi_extractor():
    gen = torch.Generator().manual_seed(5)
    feats = (torch.randn(1, 4 * 2, 32, 32, generator=gen), torch.randn(1, 4 * 2, 16, 16, generator=gen))
    rois = torch.tensor([[0., 4., 4., 40., 40.], [0., 10., 10., 200., 180.]])
    multi = PSRoIExtractor(roi_layer=dict(type='PSRoIAlign', output_size=2), featmap_strides=[4, 8],
                           finest_scale=56)
    out = multi(feats, rois)
    levels = multi.map_roi_levels(rois, 2)
    assert levels.tolist() == [0, 1]
    for i, level in enumerate(levels.tolist()):
        single = PSRoIExtractor(roi_layer=dict(type='PSRoIAlign', output_size=2),
                                featmap_strides=[[4, 8][level]])
        torch.testing.assert_close(out[i:i + 1], single((feats[level], ), rois[i:i + 1]))


def test_empty_rois():
    extractor = PSRoIExtractor(roi_layer=dict(type='PSRoIPool', output_size=7), featmap_strides=[16])
    out = extractor((torch.randn(1, 49 * 5, 8, 8), ), torch.zeros(0, 5))
    assert out.shape == (0, 5, 7, 7)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match='not supported.*PSRoIPool'):
        PSRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7), featmap_strides=[16])
    with pytest.raises(ValueError, match='sampling_ratio'):
        PSRoIExtractor(roi_layer=dict(type='PSRoIAlign', output_size=7, sampling_ratio=0), featmap_strides=[16])
    extractor = PSRoIExtractor(roi_layer=dict(type='PSRoIPool', output_size=7), featmap_strides=[16])
    with pytest.raises(ValueError, match='not a multiple'):
        extractor((torch.randn(1, 50, 8, 8), ), torch.tensor([[0., 0., 0., 32., 32.]]))
    checked = PSRoIExtractor(roi_layer=dict(type='PSRoIPool', output_size=7), featmap_strides=[16], out_channels=3)
    with pytest.raises(ValueError, match='out_channels=3'):
        checked((torch.randn(1, 49 * 5, 8, 8), ), torch.tensor([[0., 0., 0., 32., 32.]]))


@pytest.mark.parametrize('context', ['no_grad', 'inference_mode'])
@pytest.mark.parametrize('mode', ['PSRoIPool', 'PSRoIAlign'])
def test_inference_pools_roi_chunks_in_threads_bit_for_bit(mode, context, monkeypatch):
    """Without autograd the CPU kernel runs on chunks of the RoIs in worker threads, in the caller's grad
    and inference mode, and gives the single call's result exactly; with autograd it runs once."""
    gen = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 2 * 2 * 3, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _rois_inside(100, 9, 11, 4, gen)
    extractor = PSRoIExtractor(roi_layer=dict(type=mode, output_size=2), featmap_strides=[4])
    kernel_layer = getattr(torchvision.ops, mode)  # the torchvision layer whose forward the project's wraps
    calls = []
    kernel_forward = kernel_layer.forward

    def recording_forward(self, input, rois):
        calls.append((threading.get_ident(), rois.size(0), torch.is_grad_enabled(),
                      torch.is_inference_mode_enabled()))
        return kernel_forward(self, input, rois)

    monkeypatch.setattr(kernel_layer, 'forward', recording_forward)
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 3)
    with getattr(torch, context)():
        out = extractor((feat, ), rois)
    inference = context == 'inference_mode'
    assert len(calls) == 3 and sum(n for _, n, _, _ in calls) == 100
    assert any(ident != threading.get_ident() for ident, _, _, _ in calls)
    assert all(not grad and inference_mode == inference for _, _, grad, inference_mode in calls)
    assert not out.requires_grad and out.is_inference() == inference
    calls.clear()
    single = extractor((feat, ), rois)
    assert calls == [(threading.get_ident(), 100, True, False)] and single.grad_fn is not None
    assert torch.equal(out, single.detach())
    if mode == 'PSRoIPool':
        torch.testing.assert_close(out, ps_roi_pool_reference(feat.detach(), rois, 2, 0.25))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('mode', ['PSRoIPool', 'PSRoIAlign'])
def test_cuda_matches_cpu(mode):
    gen = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 49 * 3, 20, 24, generator=gen)
    rois = _rois_inside(30, 20, 24, 16, gen).float()
    extractor = PSRoIExtractor(roi_layer=dict(type=mode, output_size=7), featmap_strides=[16])
    cpu = extractor((feat, ), rois)
    gpu = extractor.cuda()((feat.cuda(), ), rois.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)


def roi_max_pool_reference(feat, rois, k, scale):
    """Fast R-CNN RoI pooling: max over the cells of each bin (RoI ends inclusive)."""
    n_rois, (_, channels, height, width) = len(rois), feat.shape
    out = torch.zeros(n_rois, channels, k, k, dtype=feat.dtype)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sw, sh, ew, eh = (_round(v * scale) for v in (x1, y1, x2, y2))
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        for i in range(k):
            for j in range(k):
                hs = min(max(math.floor(i * roi_h / k) + sh, 0), height)
                he = min(max(math.ceil((i + 1) * roi_h / k) + sh, 0), height)
                ws = min(max(math.floor(j * roi_w / k) + sw, 0), width)
                we = min(max(math.ceil((j + 1) * roi_w / k) + sw, 0), width)
                if he > hs and we > ws:
                    out[r, :, i, j] = feat[int(b), :, hs:he, ws:we].amax(dim=(1, 2))
    return out


def test_torchvision_roi_pool_matches_reference_and_gradcheck():
    gen = torch.Generator().manual_seed(13)
    feat = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _rois_inside(8, 9, 11, 4, gen)
    extractor = TorchvisionRoIExtractor(roi_layer=dict(type='RoIPool', output_size=3), out_channels=3,
                                        featmap_strides=[4])
    out = extractor((feat, ), rois)
    torch.testing.assert_close(out, roi_max_pool_reference(feat.detach(), rois, 3, 0.25))
    assert torch.autograd.gradcheck(lambda f: extractor((f, ), rois), (feat, ))


def test_range_max_roi_pool_matches_torchvision_on_large_bins(monkeypatch):
    """Big and clipped RoIs (bins up to 9 x 13 cells: several window levels), malformed ones, two images."""
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 6, 40, 64, generator=gen, dtype=torch.float64)
    xy = torch.rand(200, 4, generator=gen, dtype=torch.float64) * torch.tensor([1100., 700., 1100., 700.]) - 50
    rois = torch.cat([torch.randint(0, 2, (200, 1), generator=gen).double(), xy], dim=1)
    rois[:20, 3:] = rois[:20, 1:3] - 5  # x2 < x1: torchvision's 1 x 1 RoI
    layer = RangeMaxRoIPool(output_size=7, spatial_scale=1 / 16)
    with torch.no_grad():
        expected = roi_pool(feat, rois, 7, 1 / 16)
        torch.testing.assert_close(layer(feat, rois), expected, rtol=0, atol=0)
        layer.bins_per_chunk = 5  # many chunks per window level, a partial last one
        torch.testing.assert_close(layer(feat, rois), expected, rtol=0, atol=0)
    assert TorchvisionRoIExtractor(roi_layer=dict(type='RoIPool', output_size=7), out_channels=6,
                                   featmap_strides=[16]).roi_layers[0].__class__ is RangeMaxRoIPool
    # Training takes torchvision's kernel (cheap argmax backward): the gathers never run under autograd.
    calls = []
    monkeypatch.setattr(torch.Tensor, 'index_copy_', lambda *a: calls.append(a))
    out = layer(feat.clone().requires_grad_(), rois)
    assert out.requires_grad and not calls


def test_range_max_roi_pool_writes_roi_sets_side_by_side_in_channels_last_memory():
    """``groups=2`` (proposals, then their contexts) is the two sets' pooled features concatenated along
    the channels, written channels-last in one buffer, on the CPU path and on torchvision's (autograd)."""
    gen = torch.Generator().manual_seed(12)
    feat = torch.randn(2, 6, 40, 64, generator=gen, dtype=torch.float64)
    rois = _mixed_rois(60, gen)  # empty bins included: off-map and zero-size RoIs
    proposals, contexts = rois[:30], rois[30:]
    expected = torch.cat([roi_pool(feat, proposals, 7, 1 / 16), roi_pool(feat, contexts, 7, 1 / 16)], dim=1)
    layer = RangeMaxRoIPool(output_size=7, spatial_scale=1 / 16)
    layer.bins_per_chunk = 37  # chunks that straddle the two sets
    with torch.no_grad():
        out = layer(feat, rois, groups=2)
    assert out.shape == (30, 12, 7, 7) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    trained = layer(feat.clone().requires_grad_(), rois, groups=2)
    assert trained.requires_grad and trained.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(trained.detach(), expected, rtol=0, atol=0)
    with torch.no_grad():
        assert layer(feat, rois[:0], groups=2).shape == (0, 12, 7, 7)
    for grad in (False, True):  # both paths name the problem
        with torch.set_grad_enabled(grad), pytest.raises(ValueError, match='31 RoIs do not split into 2 equal sets'):
            layer(feat.clone().requires_grad_(grad), rois[:31], groups=2)


def test_pool_roi_sets_with_mmdet_and_project_extractors():
    """The RoI head's proposal + context pooling: the same features through mmdet's SingleRoIExtractor
    (mmcv's RoIAlign) and through this project's extractors, as the two sets concatenated along channels."""
    from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

    from projects.acouplenet.roi_extractors import pool_roi_sets
    gen = torch.Generator().manual_seed(13)
    feat = torch.randn(1, 5, 20, 24, generator=gen)
    rois = torch.tensor([[0., 8., 8., 120., 90.], [0., 30., 4., 60., 70.], [0., 0., 0., 380., 310.]])
    contexts = rois * torch.tensor([1., .5, .5, 1., 1.])
    for roi_layer in (dict(type='RoIAlign', output_size=3, sampling_ratio=2), dict(type='RoIPool', output_size=3)):
        mmdet_layer = dict(roi_layer, type='RoIAlign', aligned=True) if roi_layer['type'] == 'RoIAlign' else None
        extractors = [TorchvisionRoIExtractor(roi_layer=roi_layer, out_channels=5, featmap_strides=[16])]
        if mmdet_layer is not None:
            extractors.append(SingleRoIExtractor(roi_layer=mmdet_layer, out_channels=5, featmap_strides=[16]))
        for extractor in extractors:
            with torch.no_grad():
                out = pool_roi_sets(extractor, feat, (rois, contexts))
                expected = torch.cat([extractor((feat, ), rois), extractor((feat, ), contexts)], dim=1)
            assert out.shape == (3, 10, 3, 3) and out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out, expected)


def _mixed_rois(n, gen, num_imgs=2):
    """Big, small, clipped, off-map, zero-size and reversed RoIs on a 40 x 64 map of stride 16."""
    corners = torch.rand(n, 2, 2, generator=gen, dtype=torch.float64) * torch.tensor([1100., 700.]) - 50
    xy = torch.cat([corners.amin(1), corners.amax(1)], dim=1)
    rois = torch.cat([torch.randint(0, num_imgs, (n, 1), generator=gen).double(), xy], dim=1)
    rois[:10, 3:] = rois[:10, 1:3]  # zero-size
    rois[10:20, 3:] = rois[10:20, 1:3] - 5  # x2 < x1
    return rois


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_gather_roi_align_matches_torchvision_forward_and_backward(sampling_ratio, aligned):
    """Adaptive (0) and fixed sampling, both alignments, a non-square output, degenerate RoIs, two images."""
    gen = torch.Generator().manual_seed(6)
    feat = torch.randn(2, 5, 40, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = _mixed_rois(120, gen)
    layer = GatherRoIAlign(output_size=(7, 5), spatial_scale=1 / 16, sampling_ratio=sampling_ratio, aligned=aligned)
    if aligned and sampling_ratio == 0:
        # A reversed RoI has a negative adaptive sample count: torchvision's CPU kernel fails on it
        # ("cannot create std::vector larger than max_size()"); this layer takes no samples, so zeros.
        reversed_ = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
        assert reversed_.sum() >= 10
        assert (layer(feat, rois[reversed_]) == 0).all()
        rois = rois[~reversed_]
    out = layer(feat, rois)
    expected = roi_align(feat, rois, (7, 5), 1 / 16, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grad, = torch.autograd.grad(out, feat, grad_out)
    expected_grad, = torch.autograd.grad(expected, feat, grad_out)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    layer = TorchvisionRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7), out_channels=5,
                                    featmap_strides=[16]).roi_layers[0]
    # mmcv's defaults: an mmdet roi_layer dict means the same with this extractor
    assert type(layer) is GatherRoIAlign and layer.sampling_ratio == 0 and layer.aligned


def test_gather_roi_align_writes_roi_sets_side_by_side_bit_for_bit():
    """``groups=2`` (proposals, then their contexts): the two sets' features concatenated along the
    channels, channels-last, equal bit for bit to pooling once and concatenating, and so is the gradient
    (each map cell sums its taps in the same order), so that training gives the same weights."""
    from projects.acouplenet.roi_extractors import concat_roi_sets
    gen = torch.Generator().manual_seed(14)
    feat = torch.randn(2, 6, 40, 64, generator=gen, requires_grad=True)
    rois = _mixed_rois(60, gen).float()
    layer = GatherRoIAlign(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
    out = layer(feat, rois, groups=2)
    expected = concat_roi_sets(layer(feat, rois), 2)
    assert out.shape == (30, 12, 7, 7) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    grad_out = torch.randn(out.shape, generator=gen)
    grad, = torch.autograd.grad(out, feat, grad_out)
    expected_grad, = torch.autograd.grad(expected, feat, grad_out)
    assert torch.equal(grad, expected_grad)
    assert layer(feat, rois[:0], groups=2).shape == (0, 12, 7, 7)
    with pytest.raises(ValueError, match='31 RoIs do not split into 2 equal sets'):
        layer(feat, rois[:31], groups=2)


@pytest.mark.parametrize('layer', [
    RangeMaxRoIPool(output_size=7, spatial_scale=1 / 16),
    GatherRoIAlign(output_size=7, spatial_scale=1 / 16, sampling_ratio=2, aligned=True)
], ids=['RangeMaxRoIPool', 'GatherRoIAlign'])
def test_project_roi_layers_take_torchvision_box_lists(layer):
    """As torchvision's own layers, the project's take a per-image list of (R_i, 4) boxes (torchvision's
    kernel pools it) as well as (R, 5) RoIs, sets included, and check the sets alike."""
    from projects.acouplenet.roi_extractors import concat_roi_sets
    gen = torch.Generator().manual_seed(15)
    feat = torch.randn(2, 6, 40, 64, generator=gen)
    rois = _mixed_rois(40, gen)[20:].float()
    rois = rois[rois[:, 0].argsort(stable=True)]  # image 0's boxes, then image 1's, as the list holds them
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    with torch.no_grad():
        expected = layer(feat, rois)
        torch.testing.assert_close(layer(feat, boxes), expected, rtol=1e-6, atol=1e-6)
        sets = layer(feat, boxes, groups=2)
        assert sets.shape == (10, 12, 7, 7) and sets.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(sets, concat_roi_sets(expected, 2), rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match=f'{type(layer).__name__}: 19 RoIs do not split into 2 equal sets'):
            layer(feat, [boxes[0], boxes[1][1:]], groups=2)


def test_gather_roi_align_equals_mmcv_roi_align_of_mmdet_configs():
    """mmdet's default RoI layer, mmcv's RoIAlign (aligned, adaptive sampling), gives the same numbers."""
    from mmcv.ops import RoIAlign as MMCVRoIAlign
    gen = torch.Generator().manual_seed(8)
    feat = torch.randn(2, 4, 40, 64, generator=gen, requires_grad=True)
    rois = _mixed_rois(60, gen)[20:].float()  # mmcv asserts on reversed RoIs (rows 10-19)
    out = GatherRoIAlign(output_size=14, spatial_scale=1 / 16, sampling_ratio=0, aligned=True)(feat, rois)
    expected = MMCVRoIAlign(14, 1 / 16, sampling_ratio=0)(feat, rois)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad, = torch.autograd.grad(out.sum(), feat)
    expected_grad, = torch.autograd.grad(expected.sum(), feat)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-4)


def test_torchvision_extractor_one_level_is_the_layer_and_scales_rois():
    """One level: the RoI layer's own output (no zero-filled buffer), with roi_scale_factor applied."""
    gen = torch.Generator().manual_seed(9)
    feat = torch.randn(2, 4, 12, 20, generator=gen)
    rois = _mixed_rois(40, gen)[20:].float()
    extractor = TorchvisionRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
                                        out_channels=4, featmap_strides=[16])
    layer = extractor.roi_layers[0]
    torch.testing.assert_close(extractor((feat, ), rois), layer(feat, rois), rtol=0, atol=0)
    torch.testing.assert_close(extractor((feat, ), rois, roi_scale_factor=2.0),
                               layer(feat, extractor.roi_rescale(rois, 2.0)), rtol=0, atol=0)
    assert not torch.equal(extractor((feat, ), rois, roi_scale_factor=2.0), extractor((feat, ), rois))
    assert extractor((feat, ), rois[:0]).shape == (0, 4, 7, 7)


def test_torchvision_extractor_rejects_bad_layers():
    with pytest.raises(ValueError, match='not supported'):
        TorchvisionRoIExtractor(roi_layer=dict(type='RoIWarp', output_size=7), out_channels=3, featmap_strides=[16])
    with pytest.raises(ValueError, match="unknown roi_layer keys \\['aligned'\\] for RoIPool"):
        TorchvisionRoIExtractor(roi_layer=dict(type='RoIPool', output_size=7, aligned=True), out_channels=3,
                                featmap_strides=[16])
