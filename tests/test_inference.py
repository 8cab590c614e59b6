"""Inference like an MMDetection user: DetInferencer, init_detector / inference_detector and the demo."""
import importlib.util
import json

import mmcv
import pytest
import torch
from mmengine.config import Config

from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmdet.registry import MODELS
from projects.acouplenet.visualization import predict_with_attention

from .conftest import REPO, SHAPES_CONFIG


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint of the shapes ACoupleNet (random weights) in mmengine's format."""
    from projects.acouplenet.shapes import CLASSES
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('ckpt') / 'acouplenet_shapes.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=CLASSES))), path)
    return path


@pytest.fixture(scope='module')
def images(tiny_shapes):
    return sorted(str(p) for p in (tiny_shapes / 'val').glob('*.jpg'))[:2]


def test_init_detector_and_inference_detector(checkpoint, images):
    model = init_detector(str(SHAPES_CONFIG), str(checkpoint), device='cpu')
    assert model.dataset_meta['classes'][0] == 'face-ellipse'
    results = inference_detector(model, images)
    assert len(results) == 2
    for result, path in zip(results, images):
        boxes = result.pred_instances.bboxes
        h, w = result.metainfo['ori_shape']
        assert boxes.shape[1] == 4 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert result.metainfo['img_path'] == path


def test_det_inferencer(checkpoint, images, tmp_path):
    inferencer = DetInferencer(model=str(SHAPES_CONFIG), weights=str(checkpoint), device='cpu')
    out = inferencer(images, out_dir=str(tmp_path), no_save_pred=False)
    assert len(out['predictions']) == 2
    prediction = out['predictions'][0]
    assert set(prediction) >= {'labels', 'scores', 'bboxes'}
    assert len(prediction['labels']) == len(prediction['scores']) == len(prediction['bboxes'])
    saved = sorted((tmp_path / 'preds').glob('*.json'))
    assert len(saved) == 2 and 'bboxes' in json.loads(saved[0].read_text())
    assert len(list((tmp_path / 'vis').glob('*.jpg'))) == 2


def test_predict_with_attention_gives_three_maps_over_the_image(checkpoint, images):
    model = init_detector(str(SHAPES_CONFIG), str(checkpoint), device='cpu')
    result, maps = predict_with_attention(model, images[0])
    assert [stride for stride, _ in maps] == [4, 8, 16]
    for stride, amap in maps:
        assert amap.shape == (256 // stride, 256 // stride)
        assert float(amap.min()) >= 0 and float(amap.max()) <= 1
    array_result, _ = predict_with_attention(model, mmcv.imread(images[0]))  # a BGR array works too
    torch.testing.assert_close(array_result.pred_instances.bboxes, result.pred_instances.bboxes)


def test_demo_writes_the_figure(checkpoint, images, tmp_path):
    spec = importlib.util.spec_from_file_location('demo', REPO / 'tools' / 'demo.py')
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = demo.main(images + ['--config', str(SHAPES_CONFIG), '--checkpoint', str(checkpoint), '--out',
                              str(tmp_path / 'fig.png')])
    assert out == str(tmp_path / 'fig.png') and (tmp_path / 'fig.png').stat().st_size > 10_000
    with pytest.raises(SystemExit, match='not found'):
        demo.main(['missing.jpg', '--config', str(SHAPES_CONFIG), '--checkpoint', str(checkpoint)])
