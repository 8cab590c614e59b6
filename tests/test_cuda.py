"""The detector on a CUDA GPU: the CPU's numbers, a loss step, and AMP training (skipped without CUDA).

On CUDA every RoI layer runs torchvision's kernels, while on the CPU the global branch runs the
project's own pools (``RangeMaxRoIPool``, ``GatherRoIAlign``): matching outputs check both.
"""
import pytest
import torch

from projects.acouplenet.attention_backbone import ATTENTION_GATES

from .conftest import SHAPES_CONFIG, load_tool
from .test_detector import _batch, _model
from .test_training import _scalars, _tiny_config_file

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')

# Two RoIs per image: inside, covering the image (its context is clipped), and one of a few pixels.
ROIS = torch.tensor([[0, 10, 10, 60, 70], [0, 0, 0, 149, 119], [1, 60, 20, 120, 90], [1, 5, 5, 9, 8]],
                    dtype=torch.float32)


@pytest.fixture
def exact_fp32():
    """Full fp32 convolutions and matmuls on the GPU (no TF32), so that CPU and GPU agree to ~1e-5."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _assert_close(actual, expected, name, rtol=1e-4, atol_of_max=1e-4):
    """``actual`` (any device) close to the CPU's ``expected``; the absolute tolerance scales with its maximum."""
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual.cpu(), expected, rtol=rtol, atol=atol_of_max * scale,
                               msg=lambda m: f'{name}: {m}')


def _assert_valid_detections(result):
    """Finite scores, and (x1, y1, x2, y2) boxes inside ``result``'s original image."""
    pred = result.pred_instances
    h, w = result.ori_shape
    assert torch.isfinite(pred.scores).all()
    assert (pred.bboxes[:, 0::2] >= 0).all() and (pred.bboxes[:, 0::2] <= w).all()
    assert (pred.bboxes[:, 1::2] >= 0).all() and (pred.bboxes[:, 1::2] <= h).all()


def _outputs(model, device, inputs, samples):
    """conv4/conv5 features, attention logits and both branches' coupled head outputs on ``ROIS``."""
    with torch.no_grad():
        feats, logits = model.extract_feat_and_attention(inputs.to(device))
        _, roi_x = model._route(feats)
        head = model.roi_head._bbox_forward(model.roi_head.head_inputs(roi_x, samples), ROIS.to(device))
    names = ['conv4', 'conv5'] + [f'attention_{i}' for i in range(len(logits))] + ['cls_score', 'bbox_pred']
    return dict(zip(names, (*feats, *logits, head['cls_score'], head['bbox_pred'])))


@pytest.mark.parametrize('pooling', ['RoIPool', 'RoIAlign'])
def test_features_attention_and_head_outputs_match_the_cpu(exact_fp32, pooling):
    model = _model()
    extractor = model.roi_head.bbox_roi_extractor
    if pooling == 'RoIAlign':  # the CPU's GatherRoIAlign against torchvision's CUDA roi_align
        from mmdet.registry import MODELS
        model.roi_head.bbox_roi_extractor = MODELS.build(dict(
            type='TorchvisionRoIExtractor', roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2),
            out_channels=extractor.out_channels, featmap_strides=extractor.featmap_strides))
    model.eval()
    inputs, samples = _batch()
    cpu = _outputs(model, 'cpu', inputs, samples)
    gpu = _outputs(model.cuda(), 'cuda', inputs, samples)
    assert len(cpu) == 2 + 3 + 2  # three attention maps
    for name, expected in cpu.items():
        assert gpu[name].is_cuda
        _assert_close(gpu[name], expected, name)


@pytest.mark.parametrize('gate', ATTENTION_GATES)
def test_each_attention_gate_matches_the_cpu_forward_and_backward_and_runs_in_fp16(exact_fp32, gate):
    """The gating hooks (on the stages; for 'branch', on the norms ending the last residual branches) on CUDA:
    features, attention logits and the backbone's gradients as on the CPU, none left behind, and fp16
    autocast (what ``--amp`` runs) close to fp32."""
    backbone = _model(attention_gate=gate).backbone
    backbone.train()  # frozen BN (norm_eval): deterministic
    inputs, _ = _batch()

    def run(device):
        backbone.zero_grad()
        feats, logits = backbone.forward_with_attention(inputs.to(device))
        outputs = (*feats, *logits)
        sum(t.square().mean() for t in outputs).backward()
        # Copies: .cpu() of a CPU tensor is the tensor itself, which backbone.cuda() would move.
        grads = {n: p.grad.to('cpu', copy=True) for n, p in backbone.named_parameters() if p.grad is not None}
        return [t.detach() for t in outputs], grads

    cpu_outputs, cpu_grads = run('cpu')
    backbone.cuda()
    gpu_outputs, gpu_grads = run('cuda')
    assert len(cpu_outputs) == 2 + 3 and set(gpu_grads) == set(cpu_grads)
    assert any(n.startswith('attention_blocks.') for n in gpu_grads)
    for i, (gpu, cpu) in enumerate(zip(gpu_outputs, cpu_outputs)):
        assert gpu.is_cuda
        _assert_close(gpu, cpu, f'output {i}')
    for name, grad in gpu_grads.items():
        # cuDNN's weight gradients sum over the batch and the map in another order than the CPU's.
        _assert_close(grad, cpu_grads[name], name, rtol=1e-3, atol_of_max=1e-3)
    assert not any(m._forward_hooks for m in backbone.modules())

    with torch.no_grad(), torch.autocast('cuda', dtype=torch.float16):
        feats, logits = backbone.forward_with_attention(inputs.cuda())
    for i, (half, fp32) in enumerate(zip((*feats, *logits), cpu_outputs)):
        assert half.dtype == torch.float16 and torch.isfinite(half).all(), f'output {i}'
        _assert_close(half.float(), fp32, f'fp16 output {i}', rtol=0.05, atol_of_max=0.02)


def test_predict_on_cuda_gives_boxes_inside_each_image():
    model = _model().cuda().eval()
    inputs, samples = _batch()
    with torch.no_grad():
        results = model.predict(inputs.cuda(), [s.to('cuda') for s in samples])
    for result in results:
        assert result.pred_instances.bboxes.is_cuda
        _assert_valid_detections(result)


def test_demo_and_inferencer_on_cuda(exact_fp32, shapes_checkpoint, shapes_images, tmp_path):
    """The demo on the GPU: the CPU's attention maps, valid detections, the figure; DetInferencer on cuda:0.

    Random weights score every class near 1/(C+1), so the detections' order rests on near-ties and is
    compared by validity, not against the CPU's.
    """
    from mmdet.apis import DetInferencer, init_detector
    from projects.acouplenet.visualization import predict_with_attention
    runs = {device: predict_with_attention(init_detector(str(SHAPES_CONFIG), str(shapes_checkpoint), device=device),
                                           shapes_images[0])
            for device in ('cpu', 'cuda:0')}
    (cpu_result, cpu_maps), (gpu_result, gpu_maps) = runs['cpu'], runs['cuda:0']
    assert [stride for stride, _ in gpu_maps] == [stride for stride, _ in cpu_maps] == [4, 8, 16]
    for (stride, gpu_map), (_, cpu_map) in zip(gpu_maps, cpu_maps):
        assert gpu_map.device.type == 'cpu'  # cropped and brought to the host for drawing
        _assert_close(gpu_map, cpu_map, f'attention map, stride {stride}')
    pred = gpu_result.pred_instances
    assert gpu_result.ori_shape == cpu_result.ori_shape and pred.bboxes.is_cuda
    assert len(pred) == len(cpu_result.pred_instances) > 0
    _assert_valid_detections(gpu_result)

    figure = tmp_path / 'fig.png'
    model_args = ['--config', str(SHAPES_CONFIG), '--checkpoint', str(shapes_checkpoint)]
    out = load_tool('demo').main(shapes_images + model_args + ['--device', 'cuda:0', '--score-thr', '0.1',
                                                               '--out', str(figure)])
    assert out == str(figure) and figure.stat().st_size > 10_000
    inferencer = DetInferencer(model=str(SHAPES_CONFIG), weights=str(shapes_checkpoint), device='cuda:0')
    predictions = inferencer(shapes_images, out_dir=str(tmp_path / 'inferencer'), no_save_pred=False)['predictions']
    assert len(predictions) == 2 and all(len(p['bboxes']) == len(p['scores']) > 0 for p in predictions)
    assert len(list((tmp_path / 'inferencer' / 'vis').glob('*.jpg'))) == 2


def test_loss_step_on_cuda_matches_the_cpus_attention_losses_and_gradients(exact_fp32):
    """The attention losses are deterministic (masks, frozen BN); the sampled RoI losses are only checked finite."""
    model = _model().train()
    inputs, samples = _batch()

    def step(device):
        model.zero_grad()
        losses = model.loss(inputs.to(device), [s.to(device) for s in samples])
        loss, _ = model.parse_losses(losses)
        loss.backward()
        return ({k: v.detach().cpu() for k, v in losses.items() if k.startswith('loss_att')},
                {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0},
                losses)

    cpu_att, cpu_grads, _ = step('cpu')
    model.cuda()
    gpu_att, gpu_grads, gpu_losses = step('cuda')
    assert set(cpu_att) == set(gpu_att) == {'loss_att_s4', 'loss_att_s8', 'loss_att_s16'}
    for name in cpu_att:
        _assert_close(gpu_att[name], cpu_att[name], name)
    for name, value in gpu_losses.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        assert all(torch.isfinite(v).all() for v in values), name
    assert gpu_grads == cpu_grads and any('attention' in n for n in gpu_grads)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


def test_train_with_amp_on_cuda(tmp_path, tiny_shapes):
    """``tools/train.py --amp``: fp16 autocast and mmengine's grad scaler, then a COCO evaluation."""
    config = _tiny_config_file(tmp_path, tiny_shapes, iters=4)
    work_dir = tmp_path / 'amp'
    load_tool('train').main([str(config), '--amp', '--work-dir', str(work_dir)])
    scalars = _scalars(work_dir)
    train = [s for s in scalars if 'loss' in s]
    assert len(train) == 4 and all(torch.isfinite(torch.tensor(s['loss'])) for s in train)
    assert any('coco/bbox_mAP' in s for s in scalars)
    # AmpOptimWrapper's dynamic loss scale is saved, and loads under the project's safe (weights-only) loading.
    checkpoint = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert checkpoint['optimizer']['loss_scaler']['scale'] > 0
