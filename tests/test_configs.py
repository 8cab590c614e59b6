"""Every config under configs/ loads, its types resolve, and its (shrunk) model trains and predicts."""
import math
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.registry import DATASETS, MODELS, TRANSFORMS

from projects.acouplenet.roi_extractors import PS_ROI_LAYERS

from .conftest import CONFIGS, REPO, make_sample, shrink_model_cfg


def _config_id(path):
    return str(path.relative_to(REPO / 'configs'))


def _types(node):
    if isinstance(node, dict):
        if isinstance(node.get('type'), str):
            yield node['type']
        for value in node.values():
            yield from _types(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _types(value)


def test_there_are_configs():
    names = {_config_id(p) for p in CONFIGS}
    assert {'acouplenet/acouplenet_r101_8xb2-ms-180k_coco.py', 'acouplenet/couplenet_r101_4xb1-ms-580k_coco.py',
            'acouplenet/acouplenet_r101_1xb2-ms-110k_voc0712.py',
            'acouplenet/couplenet_r101_1xb2-ms-110k_voc0712.py'} <= names
    table1 = [n for n in names if re.fullmatch(r'acouplenet/ablations/couplenet-(none|l2|conv)-(sum|prod|max)_.*', n)]
    assert len(table1) == 9
    table4 = [n for n in names if re.fullmatch(r'acouplenet/ablations/(rfcn|couplenet-global-only)-[12]extra-.*', n)]
    assert len(table4) == 4
    assert 'acouplenet/ablations/rfcn-3x-psroi_r101_1xb2-110k_voc0712.py' in names  # Table IV's 3x PSRoI pooling


def _resolves(name):
    """A config type is a registered class (in any mmdet/mmengine registry it may live in), an mmcv op or a
    position-sensitive RoI layer of PSRoIExtractor."""
    from mmcv import ops
    from mmengine.registry import WEIGHT_INITIALIZERS

    from mmdet.registry import DATA_SAMPLERS, METRICS, TASK_UTILS
    registries = (MODELS, TASK_UTILS, DATASETS, TRANSFORMS, DATA_SAMPLERS, METRICS, WEIGHT_INITIALIZERS)
    return (name == 'nms' or name in PS_ROI_LAYERS or hasattr(ops, name)
            or any(r.get(name) is not None for r in registries))


@pytest.mark.parametrize('path', CONFIGS, ids=_config_id)
def test_config_types_resolve(path):
    cfg = Config.fromfile(str(path))
    for section in ('model', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator'):
        for name in _types(cfg.get(section, {})):
            assert _resolves(name), f'{name} in {section} of {path.name} is not registered'


@pytest.mark.parametrize('path', CONFIGS, ids=_config_id)
def test_mmdet_analyze_results_finds_the_loading_steps_of_the_train_pipeline(path):
    """mmdet's analyze_results tool rebuilds the test set with the train pipeline's loading steps, which it
    recognises by type (mmdet's own two classes only); the datasets do what custom loaders would."""
    from mmdet.datasets import get_loading_pipeline
    from projects.acouplenet import CheckedDatasetMixin
    dataset = Config.fromfile(str(path)).train_dataloader.dataset
    while 'pipeline' not in dataset:  # the tool's wrappers: ConcatDataset's first dataset, RepeatDataset's own
        dataset = dataset.datasets[0] if 'datasets' in dataset else dataset.dataset
    assert [t['type'] for t in get_loading_pipeline(dataset.pipeline)] == ['LoadImageFromFile', 'LoadAnnotations']
    if 'faster_rcnn' not in path.parts:  # mmdet's own model on mmdet's own CocoDataset
        assert issubclass(DATASETS.get(dataset.type), CheckedDatasetMixin), dataset.type


def _batch(model, num_images=2, training=True):
    """Two images of different sizes through the model's own data preprocessor."""
    shapes = [(120, 150), (96, 128)][:num_images]
    rng = np.random.RandomState(0)
    inputs, samples = [], []
    for h, w in shapes:
        inputs.append(torch.from_numpy(rng.randint(0, 255, (3, h, w), dtype=np.uint8)))
        samples.append(make_sample(img_shape=(h, w), pad_shape=(h, w), boxes=((10, 12, 60, 70), (40, 30, w - 5, h - 8)),
                                   labels=(0, 1)))
    return model.data_preprocessor(dict(inputs=inputs, data_samples=samples), training=training)


@pytest.mark.parametrize('path', CONFIGS, ids=_config_id)
def test_config_builds_and_runs_a_loss_and_a_predict_step(path):
    cfg = Config.fromfile(str(path))
    model = MODELS.build(shrink_model_cfg(cfg.model))
    model.init_weights()
    model.train()
    data = _batch(model)
    losses = model(**data, mode='loss')
    total, log_vars = model.parse_losses(losses)
    assert math.isfinite(total.item()), log_vars
    assert all(math.isfinite(v.item()) for v in log_vars.values()), log_vars
    total.backward()
    if cfg.model.type == 'ACoupleNet' and model.with_attention:
        strides = {4: 0, 8: 1, 16: 2}
        expected = {f'loss_att_s{s}' for s, i in strides.items() if i in model.backbone.attention_stages}
        assert {k for k in losses if k.startswith('loss_att')} == expected

    model.eval()
    with torch.no_grad():
        results = model(**_batch(model, training=False), mode='predict')
    for result in results:
        h, w = result.metainfo['img_shape']
        boxes = result.pred_instances.bboxes
        assert torch.isfinite(boxes).all() and torch.isfinite(result.pred_instances.scores).all()
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()


def test_shapes_faster_rcnn_trains_at_the_budget_of_the_shapes_acouplenet():
    """The side-by-side's Faster R-CNN C4 repeats the shapes ACoupleNet's backbone settings (their backbones
    nest differently); what it keeps of mmdet's own is named in its config and stays as measured."""
    acn = Config.fromfile(str(REPO / 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'))
    frcnn = Config.fromfile(str(REPO / 'configs/shapes/faster-rcnn_r18-w32-c4_1xb4-2k_shapes.py'))
    resnet = acn.model.backbone.backbone
    for key in ('type', 'depth', 'base_channels', 'frozen_stages', 'norm_cfg', 'norm_eval', 'zero_init_residual',
                'style', 'init_cfg'):
        assert frcnn.model.backbone[key] == resnet[key], key
    shared_head = frcnn.model.roi_head.shared_head  # conv5 per RoI, at the width of ACoupleNet's conv5
    assert (shared_head.depth, shared_head.base_channels, shared_head.norm_cfg, shared_head.norm_eval) == \
        (resnet.depth, resnet.base_channels, resnet.norm_cfg, resnet.norm_eval)
    for key in ('in_channels', 'feat_channels', 'anchor_generator', 'loss_cls'):
        assert frcnn.model.rpn_head[key] == acn.model.rpn_head[key], key
    assert frcnn.model.train_cfg.rpn_proposal == acn.model.train_cfg.rpn_proposal
    assert frcnn.model.train_cfg.rcnn.sampler == acn.model.train_cfg.rcnn.sampler
    assert frcnn.model.test_cfg.rpn == acn.model.test_cfg.rpn
    assert frcnn.model.roi_head.bbox_head.num_classes == acn.model.roi_head.bbox_head.num_classes
    for key in ('train_dataloader', 'val_dataloader', 'val_evaluator', 'optim_wrapper', 'param_scheduler',
                'train_cfg', 'randomness'):
        assert frcnn[key] == acn[key], key
    # mmdet's own, kept (the README's 43.1 AP was measured with them): RPN box loss and R-CNN test thresholds.
    assert frcnn.model.rpn_head.loss_bbox.type == 'L1Loss' and acn.model.rpn_head.loss_bbox.type == 'SmoothL1Loss'
    assert (frcnn.model.test_cfg.rcnn.score_thr, frcnn.model.test_cfg.rcnn.nms.iou_threshold) == (0.05, 0.5)
    assert (acn.model.test_cfg.rcnn.score_thr, acn.model.test_cfg.rcnn.nms.iou_threshold) == (0.001, 0.3)
