"""Cascade attention: the backbone wrapper, the targets and the loss."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.structures import InstanceData

from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks, PolygonMasks
from projects.acouplenet import AttentionLoss, attention_targets
from projects.acouplenet import attention_loss as attention_loss_module

RESNET = dict(type='ResNet', depth=18, num_stages=4, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2),
              out_indices=(2, 3), frozen_stages=1, norm_eval=True)


def _backbone(stages=(0, 1, 2), resnet=RESNET, **kwargs):
    return MODELS.build(dict(type='AttentionBackbone', backbone=resnet, attention_stages=stages,
                             attention_channels=8, **kwargs))


def test_weights_layout_matches_wrapped_backbone():
    plain = MODELS.build(RESNET)
    no_attention = _backbone(stages=())
    assert isinstance(no_attention, ResNet)
    assert list(no_attention.state_dict()) == list(plain.state_dict())
    no_attention.load_state_dict(plain.state_dict(), strict=True)

    with_attention = _backbone()
    extra = set(with_attention.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(with_attention.state_dict())
    assert extra == {f'attention_blocks.layer{i}.conv{j}.{p}' for i in (1, 2, 3) for j in (1, 2)
                     for p in ('weight', 'bias')}
    assert with_attention.attention_blocks['layer3'].conv1.in_channels == 256  # conv4 of ResNet-18


def _conv3_gated_run(gate, grad=True):
    """A backbone gated after conv3 (layer2), its gated run on random images (with autograd or without),
    and its stem's output."""
    backbone = _backbone(stages=(1, ), attention_gate=gate)
    backbone.init_weights()
    backbone.eval()
    x = torch.randn(2, 3, 64, 96)
    # Without autograd the gate multiplies the features in place: both paths must agree.
    with torch.set_grad_enabled(grad):
        feats, logits = backbone.forward_with_attention(x)
    with torch.no_grad():
        stem = backbone.maxpool(backbone.relu(backbone.norm1(backbone.conv1(x))))
    return backbone, x, feats, logits, stem


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('gate', ['product', 'residual'])
def test_gating_multiplies_stage_output_before_next_stage(gate, grad):
    backbone, x, feats, logits, stem = _conv3_gated_run(gate, grad)
    with torch.no_grad():
        f = backbone.layer2(backbone.layer1(stem))
        logit = backbone.attention_blocks['layer2'](f)
        f = f * (torch.sigmoid(logit) + (1 if gate == 'residual' else 0))
        c4 = backbone.layer3(f)
        c5 = backbone.layer4(c4)
    assert len(logits) == 1 and logits[0].shape == (2, 1, 8, 12)
    torch.testing.assert_close(logits[0], logit)
    torch.testing.assert_close(feats[0], c4)
    torch.testing.assert_close(feats[1], c5)
    # forward() gives the same features and leaves no hooks behind
    torch.testing.assert_close(backbone(x)[1], c5)
    assert not backbone.layer2._forward_hooks


@pytest.mark.parametrize('grad', [True, False])
def test_branch_gating_gates_the_last_residual_branch_before_the_shortcut(grad):
    backbone, _, feats, logits, stem = _conv3_gated_run('branch', grad)
    with torch.no_grad():
        f = backbone.layer2[0](backbone.layer1(stem))
        last = backbone.layer2[1]  # a BasicBlock without downsampling: the shortcut is f itself
        branch = last.norm2(last.conv2(last.relu(last.norm1(last.conv1(f)))))
        logit = backbone.attention_blocks['layer2'](branch)
        f = torch.relu(f + branch * torch.sigmoid(logit))
        c4 = backbone.layer3(f)
    assert len(logits) == 1 and logits[0].shape == (2, 1, 8, 12)
    torch.testing.assert_close(logits[0], logit)
    torch.testing.assert_close(feats[0], c4)
    assert not last.norm2._forward_hooks


def test_branch_gating_refuses_checkpointed_blocks():
    with pytest.raises(ValueError, match="attention_gate='branch' cannot gate stage 'layer1'.*with_cp=True; "
                                         "set with_cp=False"):
        _backbone(stages=(0, ), resnet=dict(RESNET, with_cp=True), attention_gate='branch')


def test_attention_maps_are_not_in_the_feature_tuple():
    backbone = _backbone()
    feats, logits = backbone.forward_with_attention(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 4, 4), (512, 4, 4)]
    assert [tuple(a.shape[2:]) for a in logits] == [(16, 16), (8, 8), (4, 4)]


def test_attention_block_init_is_gaussian_0_01():
    backbone = _backbone(resnet=dict(RESNET, depth=50))
    backbone.init_weights()
    for block in backbone.attention_blocks.values():
        for conv in (block.conv1, block.conv2):
            assert 0.008 < conv.weight.std().item() < 0.012
            assert torch.all(conv.bias == 0)


def test_wrapped_backbone_behaviour_is_kept():
    backbone = _backbone()
    backbone.train()
    assert not backbone.norm1.training  # norm_eval
    assert all(not p.requires_grad for p in backbone.layer1.parameters())  # frozen_stages=1
    assert all(p.requires_grad for p in backbone.attention_blocks.parameters())


@pytest.mark.parametrize('stages', [(4, ), (0, 0), (-1, ), ('conv2', ), (True, )])
def test_bad_attention_stages(stages):
    with pytest.raises(ValueError, match=r'attention_stages=.*use distinct stage indices from 0 \(conv2\), '
                                         r'1 \(conv3\), 2 \(conv4\), 3 \(conv5\)'):
        _backbone(stages=stages)


def test_bad_attention_gate():
    with pytest.raises(ValueError, match=r"attention_gate='sum' is not supported; use one of "
                                         r"\('product', 'residual', 'branch'\)"):
        _backbone(attention_gate='sum')


def test_non_resnet_backbone_is_rejected():
    with pytest.raises(ValueError, match='not a ResNet-family backbone'):
        MODELS.build(dict(type='AttentionBackbone', backbone=dict(type='MobileNetV2')))
    with pytest.raises(ValueError, match='not a registered backbone'):
        MODELS.build(dict(type='AttentionBackbone', backbone=dict(type='ResNot')))


# -- targets ---------------------------------------------------------------------------------------
def _instances(boxes, masks=None):
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    gt.labels = torch.zeros(len(gt.bboxes), dtype=torch.long)
    if masks is not None:
        gt.masks = masks
    return gt


# Hand-drawn 8 x 8 image: an L-shaped instance and a 2 x 2 square.
L_SHAPE = np.array([
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0]], dtype=np.uint8)
SQUARE = np.zeros((8, 8), dtype=np.uint8)
SQUARE[5:7, 5:7] = 1
# Fraction of each 2x2 cell covered by the union (stride 2 map, 4 x 4):
FRACTION_S2 = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [1.0, 0.5, 0.25, 0.0],
    [0.0, 0.0, 0.25, 0.25],
    [0.0, 0.0, 0.25, 0.25]], dtype=np.float32)
# ... and of each 4x4 cell (stride 4 map, 2 x 2): 10/16, 1/16 (the L's foot), 0, 4/16
FRACTION_S4 = np.array([[10 / 16, 1 / 16], [0.0, 4 / 16]], dtype=np.float32)


def test_targets_from_bitmap_masks():
    gt = _instances([[0, 0, 5, 4], [5, 5, 7, 7]], BitmapMasks(np.stack([L_SHAPE, SQUARE]), 8, 8))
    (s2, s4), fallback = attention_targets([gt], (8, 8), [(4, 4), (2, 2)], threshold=None)
    np.testing.assert_allclose(s2[0, 0].numpy(), FRACTION_S2)
    np.testing.assert_allclose(s4[0, 0].numpy(), FRACTION_S4)
    assert fallback == []
    (s2, s4), _ = attention_targets([gt], (8, 8), [(4, 4), (2, 2)], threshold=0.5)
    np.testing.assert_array_equal(s2[0, 0].numpy(), FRACTION_S2 >= 0.5)
    np.testing.assert_array_equal(s4[0, 0].numpy(), [[1, 0], [0, 0]])
    (s2, s4), _ = attention_targets([gt], (8, 8), [(4, 4), (2, 2)])  # default: any covered pixel
    np.testing.assert_array_equal(s2[0, 0].numpy(), FRACTION_S2 > 0)
    np.testing.assert_array_equal(s4[0, 0].numpy(), [[1, 1], [0, 1]])


def test_small_objects_keep_a_foreground_cell_on_coarse_maps():
    # A 3 x 3 object straddling four 4 x 4 cells covers at most 4/16 of any of them: a half-cell rule
    # erases it from the stride-4 map, and the attention would learn to gate it away.
    mask = np.zeros((1, 16, 16), np.uint8)
    mask[0, 3:6, 3:6] = 1
    gt = _instances([[3, 3, 6, 6]], BitmapMasks(mask, 16, 16))
    (majority, ), _ = attention_targets([gt], (16, 16), [(4, 4)], threshold=0.5)
    (default, ), _ = attention_targets([gt], (16, 16), [(4, 4)])
    assert majority.sum() == 0
    np.testing.assert_array_equal(default[0, 0, :2, :2].numpy(), np.ones((2, 2)))
    assert default.sum() == 4


def test_targets_from_polygon_masks_match_bitmaps():
    # The same L and square as polygons (pixel-corner coordinates).
    polygons = PolygonMasks([[np.array([0, 0, 2, 0, 2, 3, 5, 3, 5, 4, 0, 4], dtype=np.float64)],
                             [np.array([5, 5, 7, 5, 7, 7, 5, 7], dtype=np.float64)]], 8, 8)
    gt = _instances([[0, 0, 5, 4], [5, 5, 7, 7]], polygons)
    (s2, s4), fallback = attention_targets([gt], (8, 8), [(4, 4), (2, 2)], threshold=None)
    np.testing.assert_allclose(s2[0, 0].numpy(), FRACTION_S2)
    np.testing.assert_allclose(s4[0, 0].numpy(), FRACTION_S4)
    assert fallback == []


def test_empty_image_gets_all_background():
    gt = _instances(np.zeros((0, 4)), BitmapMasks(np.zeros((0, 8, 8), np.uint8), 8, 8))
    (target, ), fallback = attention_targets([gt, _instances(np.zeros((0, 4)))], (8, 8), [(4, 4)])
    assert target.shape == (2, 1, 4, 4) and target.sum() == 0 and fallback == []


def test_box_targets_and_fallback():
    # Boxes cover the pixels whose centres they contain.
    box_gt = _instances([[1.0, 1.0, 3.0, 2.0], [5.4, 5.6, 7.6, 8.0]])
    (target, ), fallback = attention_targets([box_gt], (8, 8), [(8, 8)], target_source='mask', threshold=None)
    expected = np.zeros((8, 8), np.float32)
    expected[1:2, 1:3] = 1  # centres (1.5, 1.5), (2.5, 1.5)
    expected[6:8, 5:8] = 1  # centres x in {5.5, 6.5, 7.5}, y in {6.5, 7.5}
    np.testing.assert_array_equal(target[0, 0].numpy(), expected)
    assert fallback == [0]  # no masks: the boxes stand in
    masked = _instances([[0, 0, 5, 4]], BitmapMasks(L_SHAPE[None], 8, 8))
    (from_boxes, ), fallback = attention_targets([masked], (8, 8), [(8, 8)], target_source='box')
    assert fallback == [] and from_boxes[0, 0, :4, :5].sum() == 20  # the box, not the L


def test_masks_smaller_than_the_padded_input_sit_top_left():
    gt = _instances([[0, 0, 5, 4]], BitmapMasks(L_SHAPE[None], 8, 8))
    (target, ), _ = attention_targets([gt], (12, 16), [(12, 16)])
    assert target[0, 0, :8, :8].sum() == L_SHAPE.sum() and target[0, 0, 8:].sum() == 0
    assert target[0, 0, :, 8:].sum() == 0


def test_loss_value_and_names(monkeypatch):
    logged = []
    monkeypatch.setattr(attention_loss_module, 'print_log', lambda msg, **kw: logged.append(msg))
    gt = _instances([[0, 0, 5, 4], [5, 5, 7, 7]], BitmapMasks(np.stack([L_SHAPE, SQUARE]), 8, 8))
    logits = [torch.randn(1, 1, 2, 2), torch.randn(1, 1, 1, 1)]  # strides 4 and 8 of an 8 x 8 input
    loss = AttentionLoss(loss_weight=0.5, threshold=None)
    losses = loss(logits, [gt], (8, 8))
    assert set(losses) == {'loss_att_s4', 'loss_att_s8'}
    target = torch.tensor(FRACTION_S4)[None, None]
    p = torch.sigmoid(logits[0])
    manual = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum() / 4  # averaged over the 2x2 area
    torch.testing.assert_close(losses['loss_att_s4'], 0.5 * manual)
    assert logged == []

    # images without masks fall back to boxes, logged once per run
    no_masks = _instances([[0, 0, 4, 4]])
    loss(logits, [no_masks], (8, 8))
    loss(logits, [no_masks], (8, 8))
    assert len(logged) == 1 and 'no instance masks' in logged[0]


def test_bad_loss_settings():
    with pytest.raises(ValueError, match="target_source='boxes' is invalid; use one of \\('mask', 'box'\\)"):
        AttentionLoss(target_source='boxes')
    with pytest.raises(ValueError, match='threshold'):
        AttentionLoss(threshold=1.5)
    with pytest.raises(TypeError, match='BitmapMasks or PolygonMasks'):
        gt = _instances([[0, 0, 4, 4]], torch.zeros(1, 8, 8))
        attention_targets([gt], (8, 8), [(4, 4)])


def test_loss_reaches_attention_blocks_only_through_gating_and_logits():
    backbone = _backbone()
    x = torch.randn(1, 3, 64, 64)
    _, logits = backbone.forward_with_attention(x)
    gt = _instances([[8, 8, 40, 40]])
    losses = AttentionLoss(target_source='box')(logits, [gt], (64, 64))
    sum(losses.values()).backward()
    for name, block in backbone.attention_blocks.items():
        assert block.conv1.weight.grad is not None and block.conv1.weight.grad.abs().sum() > 0, name
    assert F.sigmoid(logits[0]).shape == (1, 1, 16, 16)
