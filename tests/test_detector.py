"""The assembled detector: gradients, routing, per-image context clipping and OHEM."""
import pytest
import torch
from mmengine.config import Config

from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from projects.acouplenet import CoupledRoIHead
from projects.acouplenet import coupled_roi_head as coupled_roi_head_module

from .conftest import REPO, make_sample, shrink_model_cfg

ACOUPLENET = REPO / 'configs/acouplenet/acouplenet_r101_8xb2-ms-180k_coco.py'
OHEM = REPO / 'configs/acouplenet/ablations/couplenet-ohem_r101_1xb2-110k_voc0712.py'


def _model(path=ACOUPLENET, attention_gate=None, **head):
    """The shrunk detector of ``path``, with ``head`` overrides of its box head (and another gate if given)."""
    cfg = Config.fromfile(str(path))
    model_cfg = shrink_model_cfg(cfg.model, num_classes=3)
    model_cfg.roi_head.bbox_head.update(head)
    if attention_gate is not None:
        model_cfg.backbone.attention_gate = attention_gate
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def _batch():
    samples = [make_sample(img_shape=(120, 150), pad_shape=(128, 160)),
               make_sample(img_shape=(96, 128), pad_shape=(128, 160), boxes=((5, 5, 50, 60), (60, 20, 120, 90)),
                           labels=(1, 2))]
    return torch.randn(2, 3, 128, 160), samples


def test_gradients_reach_every_branch_and_attention_block():
    model = _model()
    model.train()
    inputs, samples = _batch()
    loss, _ = model.parse_losses(model.loss(inputs, samples))
    loss.backward()
    head = model.roi_head.bbox_head
    modules = {
        'rpn': model.rpn_head.rpn_conv, 'reduce': head.reduce_conv, 'local_cls': head.local_cls_conv,
        'local_reg': head.local_reg_conv, 'global_conv': head.global_conv, 'global_fc': head.global_fc,
        'fc_cls': head.fc_cls, 'fc_reg': head.fc_reg, 'local_cls_scale': head.local_cls_scale,
        'global_cls_scale': head.global_cls_scale, 'local_reg_scale': head.local_reg_scale,
        'global_reg_scale': head.global_reg_scale, 'conv5': model.backbone.layer4[0].conv1,
        'conv4': model.backbone.layer3[0].conv1,
    }
    modules.update({f'attention_{name}': block.conv1 for name, block in model.backbone.attention_blocks.items()})
    for name, module in modules.items():
        grad = module.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_rpn_reads_conv4_and_heads_read_conv5():
    model = _model()
    model.eval()
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = args[0].shape
        return hook

    model.rpn_head.rpn_conv.register_forward_hook(record('rpn'))
    model.roi_head.bbox_head.reduce_conv.register_forward_hook(record('head'))
    inputs, samples = _batch()
    with torch.no_grad():
        model.predict(inputs, samples)
    assert seen['rpn'] == (2, 256, 8, 10)  # conv4 of ResNet-18, stride 16
    assert seen['head'] == (2, 512, 8, 10)  # dilated conv5, still stride 16


def test_context_is_clipped_to_each_image_not_the_padded_batch(monkeypatch):
    model = _model()
    model.eval()
    captured = []
    real = coupled_roi_head_module.context_rois
    monkeypatch.setattr(coupled_roi_head_module, 'context_rois',
                        lambda rois, sizes, scale: captured.append(real(rois, sizes, scale)) or captured[-1])
    inputs, samples = _batch()
    with torch.no_grad():
        model.predict(inputs, samples)
    ctx = captured[-1]
    for index, (h, w) in enumerate([(120, 150), (96, 128)]):
        mine = ctx[ctx[:, 0] == index]
        assert len(mine) > 0
        assert (mine[:, 3] <= w).all() and (mine[:, 4] <= h).all() and (mine[:, 1:] >= 0).all()
    assert (ctx[ctx[:, 0] == 1][:, 3] > 128).sum() == 0


def test_single_roi_extractor_ignores_roi_scale_factor_with_one_level():
    """The mmdet behaviour that makes CoupledRoIHead compute context regions itself."""
    extractor = SingleRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=2, sampling_ratio=2),
                                   out_channels=3, featmap_strides=[4])
    feat = torch.randn(1, 3, 16, 16)
    rois = torch.tensor([[0., 16., 16., 32., 32.]])
    torch.testing.assert_close(extractor((feat, ), rois, roi_scale_factor=2.0), extractor((feat, ), rois))


def test_ohem_scores_candidates_with_each_images_size(monkeypatch):
    model = _model(OHEM)
    model.train()
    # Keep all 64 proposals (a random RPN's NMS leaves fewer than the 32 the sampler wants), so that
    # OHEM has to rank candidates.
    model.train_cfg.rpn_proposal.nms.iou_threshold = 1.0
    calls = []
    real = CoupledRoIHead._bbox_forward

    def spy(self, x, rois):
        calls.append((x[0].clone(), rois[:, 0].unique().tolist()))
        return real(self, x, rois)

    monkeypatch.setattr(CoupledRoIHead, '_bbox_forward', spy)
    inputs, samples = _batch()
    loss, _ = model.parse_losses(model.loss(inputs, samples))
    assert torch.isfinite(loss)
    per_image = [sizes for sizes, _ in calls if sizes.shape[0] == 1]
    assert len(per_image) >= 2, 'OHEM did not score candidates per image'
    assert [tuple(s[0].tolist()) for s in per_image[:2]] == [(120., 150.), (96., 128.)]
    full = [sizes for sizes, _ in calls if sizes.shape[0] == 2]
    assert full and full[-1].tolist() == [[120., 150.], [96., 128.]]


def test_roi_head_rejects_several_levels_and_mask_heads():
    model = _model()
    with pytest.raises(ValueError, match='one feature level'):
        model.roi_head.head_inputs((torch.randn(1, 512, 4, 4), torch.randn(1, 512, 4, 4)))
    cfg = Config.fromfile(str(ACOUPLENET))
    roi_cfg = shrink_model_cfg(cfg.model).roi_head
    roi_cfg.shared_head = dict(type='ResLayer', depth=50)
    with pytest.raises(ValueError, match='shared_head is not supported'):
        MODELS.build(roi_cfg)


def test_feature_routing_errors_name_the_fix():
    model = _model()
    model.roi_feat_index = 5
    inputs, samples = _batch()
    with pytest.raises(ValueError, match=r'roi_feat_index=5 is out of range.*out_indices to \(2, 3\)'):
        model.predict(inputs, samples)


@pytest.mark.parametrize('key, value, match', [
    ('ps_roi_extractor.roi_layer.output_size', 5,
     r'ps_roi_extractor pools \(5, 5\) bins but bbox_head.group_size is 7; set its roi_layer output_size=7'),
    ('bbox_roi_extractor.roi_layer.output_size', 5,
     r'bbox_roi_extractor pools \(5, 5\) bins but bbox_head.group_size is 7; set its roi_layer output_size=7'),
    ('bbox_roi_extractor.featmap_strides', [32],
     r'different strides .*ps_roi_extractor.: \[16\].*bbox_roi_extractor.: \[32\]'),
])
def test_extractors_that_do_not_fit_the_head_fail_at_build_time(key, value, match):
    cfg = Config.fromfile(str(ACOUPLENET))
    cfg.merge_from_dict({f'model.roi_head.{key}': value})
    with pytest.raises(ValueError, match=match):
        MODELS.build(shrink_model_cfg(cfg.model, num_classes=3))


def test_conv5_at_another_stride_than_the_extractors_is_an_error():
    cfg = Config.fromfile(str(ACOUPLENET))
    model_cfg = shrink_model_cfg(cfg.model, num_classes=3)
    model_cfg.backbone.backbone.strides = (1, 2, 2, 2)  # conv5 at stride 32
    model = MODELS.build(model_cfg)
    inputs, samples = _batch()
    for run in (lambda: model.loss(inputs, samples), lambda: model.eval().predict(inputs, samples)):
        with pytest.raises(ValueError, match=r'conv5 is 4 x 5 for a 128 x 160 batch, stride ~32, but the RoI '
                                             r'extractors assume stride 16 .*strides=\(1, 2, 2, 1\)'):
            run()
