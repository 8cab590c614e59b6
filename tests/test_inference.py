"""Inference like an MMDetection user: DetInferencer, init_detector / inference_detector and the demo."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmdet.apis import DetInferencer, inference_detector, init_detector
from projects.acouplenet.runtime import cpu_name, host_info
from projects.acouplenet.visualization import predict_with_attention

from .conftest import REPO, SHAPES_CONFIG, load_tool, shapes_test_options


def test_init_detector_and_inference_detector(shapes_checkpoint, shapes_images):
    model = init_detector(str(SHAPES_CONFIG), str(shapes_checkpoint), device='cpu')
    assert model.dataset_meta['classes'][0] == 'face-ellipse'
    results = inference_detector(model, shapes_images)
    assert len(results) == 2
    for result, path in zip(results, shapes_images):
        boxes = result.pred_instances.bboxes
        h, w = result.metainfo['ori_shape']
        assert boxes.shape[1] == 4 and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert result.metainfo['img_path'] == path


def test_det_inferencer(shapes_checkpoint, shapes_images, tmp_path):
    inferencer = DetInferencer(model=str(SHAPES_CONFIG), weights=str(shapes_checkpoint), device='cpu')
    out = inferencer(shapes_images, out_dir=str(tmp_path), no_save_pred=False)
    assert len(out['predictions']) == 2
    prediction = out['predictions'][0]
    assert set(prediction) >= {'labels', 'scores', 'bboxes'}
    assert len(prediction['labels']) == len(prediction['scores']) == len(prediction['bboxes'])
    saved = sorted((tmp_path / 'preds').glob('*.json'))
    assert len(saved) == 2 and 'bboxes' in json.loads(saved[0].read_text())
    assert len(list((tmp_path / 'vis').glob('*.jpg'))) == 2


def test_predict_with_attention_gives_three_maps_over_the_image(shapes_checkpoint, shapes_images):
    from projects.acouplenet import attention_maps
    model = init_detector(str(SHAPES_CONFIG), str(shapes_checkpoint), device='cpu')
    backbone_inputs = []
    # The detector calls the backbone's forward_with_attention, not the module: watch its stem.
    handle = model.backbone.conv1.register_forward_pre_hook(lambda module, args: backbone_inputs.append(args[0]))
    try:
        result, maps = predict_with_attention(model, shapes_images[0])
    finally:
        handle.remove()
    assert len(backbone_inputs) == 1  # the maps come from the pass that made the detections
    assert [stride for stride, _ in maps] == [4, 8, 16]
    for (stride, amap), reference in zip(maps, attention_maps(model.backbone, backbone_inputs[0])):
        assert amap.shape == (256 // stride, 256 // stride)
        assert float(amap.min()) >= 0 and float(amap.max()) <= 1
        torch.testing.assert_close(amap, reference[0, 0])
    array_result, _ = predict_with_attention(model, mmcv.imread(shapes_images[0]))  # a BGR array works too
    torch.testing.assert_close(array_result.pred_instances.bboxes, result.pred_instances.bboxes)


def test_demo_writes_the_figure(shapes_checkpoint, shapes_images, tmp_path, capsys):
    demo = load_tool('demo')
    model_args = ['--config', str(SHAPES_CONFIG), '--checkpoint', str(shapes_checkpoint)]
    out = demo.main(shapes_images + model_args + ['--out', str(tmp_path / 'fig.png')])
    assert out == str(tmp_path / 'fig.png') and (tmp_path / 'fig.png').stat().st_size > 10_000
    with pytest.raises(SystemExit, match='not found'):
        demo.main(['missing.jpg'] + model_args)
    # A folder stands for its images, sorted by name (not its subfolders or other files).
    folder = tmp_path / 'images'
    (folder / 'sub').mkdir(parents=True)
    for i, image in enumerate(shapes_images[:2]):
        (folder / f'{1 - i}.PNG').write_bytes(Path(image).read_bytes())
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'sub' / 'x.png').write_bytes(Path(shapes_images[0]).read_bytes())
    assert demo._expand_folders([str(folder), shapes_images[0]]) == [
        str(folder / '0.PNG'), str(folder / '1.PNG'), shapes_images[0]]
    out = demo.main([str(folder)] + model_args + ['--out', str(tmp_path / 'folder.png')])
    assert Path(out).stat().st_size > 10_000
    (tmp_path / 'no_images').mkdir()
    (tmp_path / 'no_images' / 'notes.txt').write_text('not an image')
    with pytest.raises(SystemExit, match=r'folder .*no_images holds no images \(\.jpg.*name image files or a folder'):
        demo.main([str(tmp_path / 'no_images')] + model_args)
    before = Path(shapes_images[1]).read_bytes()
    with pytest.raises(SystemExit, match=r'--out .* is one of the inputs and would be overwritten'):
        demo.main(shapes_images + model_args + ['--out', shapes_images[1]])
    assert Path(shapes_images[1]).read_bytes() == before
    with pytest.raises(SystemExit):
        demo.main(shapes_images + model_args + ['--score-thr', '30'])
    assert '--score-thr is a score, from 0 to 1; got 30.0' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(shapes_images + model_args + ['--out', str(tmp_path / 'fig.txt')])
    assert 'cannot write .txt pictures; name a .png file' in capsys.readouterr().err
    # A checkpoint of another model is refused, not run with random weights as init_detector would.
    state = torch.load(shapes_checkpoint, map_location='cpu', weights_only=True)['state_dict']
    state.pop('roi_head.bbox_head.fc_cls.weight')
    torch.save(dict(state_dict=state), tmp_path / 'other.pth')
    with pytest.raises(SystemExit, match=r'does not fit the model(.|\n)*missing from the checkpoint: '
                                         r'roi_head\.bbox_head\.fc_cls\.weight'):
        demo.main(shapes_images + ['--config', str(SHAPES_CONFIG), '--checkpoint', str(tmp_path / 'other.pth'),
                                   '--out', str(tmp_path / 'other.png')])
    assert not (tmp_path / 'other.png').exists()


def test_figure_rows_follow_each_images_aspect(shapes_checkpoint, shapes_images, tmp_path):
    from PIL import Image

    from projects.acouplenet.visualization import PANEL_INCHES, TITLE_INCHES, attention_figure
    model = init_detector(str(SHAPES_CONFIG), str(shapes_checkpoint), device='cpu')
    wide = mmcv.imresize(mmcv.imread(shapes_images[0]), (400, 180))  # 2.2 : 1
    out = attention_figure(model, [wide, shapes_images[1]], str(tmp_path / 'fig.png'))
    width, height = Image.open(out).size
    dpi = width / (4 * PANEL_INCHES)  # four panels: detections and three attention maps
    # The wide image's row is as tall as its panels (plus titles), the square one's as wide.
    assert height == pytest.approx(dpi * (PANEL_INCHES * 180 / 400 + PANEL_INCHES + 2 * TITLE_INCHES), abs=1)


def test_class_names_without_checkpoint_meta_come_from_the_config(shapes_checkpoint, tmp_path, monkeypatch):
    """mmdet's init_detector names an unlabelled checkpoint's detections with COCO's 80 classes; ours does not."""
    from projects.acouplenet import safe_loading
    from projects.acouplenet.shapes import CLASSES
    logged = []
    monkeypatch.setattr(safe_loading, 'print_log', lambda msg, **kw: logged.append(msg))
    state = torch.load(shapes_checkpoint, map_location='cpu', weights_only=True)['state_dict']
    torch.save(dict(state_dict=state), tmp_path / 'bare.pth')
    assert init_detector(str(SHAPES_CONFIG), str(tmp_path / 'bare.pth'), device='cpu').dataset_meta['classes'][0] \
        == 'person'  # what mmdet does
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        warnings.warn('a warning before', UserWarning)
        model = safe_loading.init_detector_strict(str(SHAPES_CONFIG), str(tmp_path / 'bare.pth'))
    assert tuple(model.dataset_meta['classes']) == tuple(CLASSES)
    # mmdet's "use COCO classes by default" is not shown (its simplefilter('once') defeated an ignore filter)
    messages = [str(w.message) for w in caught]
    assert 'a warning before' in messages and not any('use COCO classes' in m for m in messages), messages
    assert len(logged) == 1 and 'holds no class names' in logged[0] and CLASSES[0] in logged[0]
    # Class names in the checkpoint win, and they must be as many as the model's classes.
    model = safe_loading.init_detector_strict(str(SHAPES_CONFIG), str(shapes_checkpoint))
    assert model.dataset_meta['classes'] == CLASSES
    torch.save(dict(state_dict=state, meta=dict(dataset_meta=dict(classes=CLASSES[:4]))), tmp_path / 'four.pth')
    with pytest.raises(ValueError, match=r'four\.pth names 4 classes in its meta, but the model of .* predicts 6; '
                                         r'use the config the checkpoint was trained with'):
        safe_loading.init_detector_strict(str(SHAPES_CONFIG), str(tmp_path / 'four.pth'))
    # A config whose test dataset names other classes than the model predicts, and a bare checkpoint.
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    cfg.test_dataloader.dataset.metainfo = dict(classes=CLASSES[:5])
    cfg.dump(str(tmp_path / 'five.py'))
    with pytest.raises(ValueError, match=r'the test dataset of .*five\.py has 5 classes, but its model predicts 6 '
                                         r'and .*bare\.pth names none; set the dataset\'s metainfo'):
        safe_loading.init_detector_strict(str(tmp_path / 'five.py'), str(tmp_path / 'bare.pth'))


def test_attention_in_boxes_against_a_hand_drawn_map():
    from projects.acouplenet.visualization import attention_in_boxes
    # A 4 x 8 map of a 64 x 128 image (stride 16): one box gated open, the rest half-closed.
    amap = torch.full((4, 8), 0.1)
    amap[1:3, 2:4] = 0.9
    amap[1, 2] = 1.0
    boxes = np.array([[32, 16, 64, 48],     # exactly cells rows 1-2, cols 2-3
                      [100, 40, 110, 50],   # inside one cell (row 2, col 6)
                      [-50, -50, -10, -10]])  # outside the image: touches no cell
    stats, background = attention_in_boxes(amap, boxes, (64, 128))
    np.testing.assert_allclose(stats[0], [0.9, 1.0, (1.0 + 3 * 0.9) / 4])  # centre (32+64)/2/16=3 -> col 3
    np.testing.assert_allclose(stats[1], [0.1, 0.1, 0.1])
    assert np.isnan(stats[2]).all()
    assert background == pytest.approx(0.1)  # the 32 - 4 - 1 cells no box touches
    _, no_background = attention_in_boxes(amap, np.array([[0, 0, 128, 64]]), (64, 128))
    assert np.isnan(no_background)


def test_detection_labels_keep_clear_of_each_other():
    from projects.acouplenet.visualization import place_labels

    def rects(corners, sizes):
        return np.concatenate([corners, corners + sizes], axis=1)

    # Three detections of one object (three classes), a lone one, one at the top edge, one at the right edge.
    boxes = np.array([[10, 30, 60, 90], [12, 32, 62, 92], [11, 31, 61, 91], [70, 60, 95, 80], [30, 0, 50, 10],
                      [90, 40, 100, 50]], dtype=float)
    sizes = np.tile([30.0, 8.0], (len(boxes), 1))
    corners = place_labels(boxes, sizes, (100, 100))
    assert corners[0].tolist() == [10, 22]  # the first label at its usual place, above its box
    assert corners[3].tolist() == [70, 52]  # so is a label with room there
    r = rects(corners, sizes)
    assert (r[:, :2] >= 0).all() and (r[:, 2:] <= 100).all()  # every label inside the image
    for i in range(len(r)):
        for j in range(i):
            overlap = (min(r[i, 2], r[j, 2]) - max(r[i, 0], r[j, 0]), min(r[i, 3], r[j, 3]) - max(r[i, 1], r[j, 1]))
            assert min(overlap) <= 0, f'labels {j} and {i} overlap: {r[j]} and {r[i]}'
    # The duplicates' labels stack inside their boxes, in placing order, each in the first free third-of-a-label
    # step: the second's label covers rows 32-40, so the third's box (top 31) gets row 31 + 4 * 8 / 3.
    assert corners[1].tolist() == [12, 32]
    np.testing.assert_allclose(corners[2], [11, 31 + 4 * 8 / 3])
    # No free place (an image as small as two labels): the least covered one, no error.
    tight = place_labels(np.array([[0, 0, 10, 8]] * 3, dtype=float), np.tile([10.0, 8.0], (3, 1)), (16, 10))
    assert tight.tolist() == [[0, 0], [0, 8], [0, 0]]


def test_attention_stats_tool(shapes_checkpoint, tiny_shapes, tmp_path):
    tool = load_tool('attention_stats')
    out = tmp_path / 'stats.json'
    rows = tool.main([str(SHAPES_CONFIG), str(shapes_checkpoint), '--data-root', str(tiny_shapes), '--out', str(out)])
    assert json.loads(out.read_text()) == rows
    val = json.loads((tiny_shapes / 'annotations' / 'instances_val.json').read_text())
    for stride in (4, 8, 16):
        per_stride = [r for r in rows if r['stride'] == stride]
        assert sum(r['n'] for r in per_stride if r['region'] != 'background') == len(val['annotations'])
        for r in per_stride:
            assert 0 <= r['mean'] <= r['max'] <= 1 and 0 <= r['centre'] <= r['max']
    with pytest.raises(SystemExit, match='not found'):
        tool.main([str(SHAPES_CONFIG), str(shapes_checkpoint), '--data-root', str(tmp_path)])


def test_speed_benchmark_post_processes_alike_and_prints_its_three_latencies(tmp_path, monkeypatch):
    """tools/benchmark_speed.py at a tiny input: one table, three latencies, one R-CNN test setting for all."""
    bench = load_tool('benchmark_speed')
    paper_rcnn = Config.fromfile(str(REPO / bench.MODELS['acouplenet'][1])).model.test_cfg.rcnn
    # mmdet's C4 default post-processes differently (score_thr 0.05, NMS 0.5): the benchmark overrides it.
    assert Config.fromfile(str(REPO / bench.MODELS['faster-rcnn-300'][1])).model.test_cfg.rcnn != paper_rcnn
    model = bench.build('faster-rcnn-300', 'cpu')
    assert model.roi_head.test_cfg == paper_rcnn and model.test_cfg.rpn.max_per_img == 300
    # The branch-gated ACoupleNet is timed on request only; its config changes nothing but the gate.
    assert 'acouplenet-branch' not in bench.parse_args([]).models
    assert bench.build('acouplenet-branch', 'cpu').backbone.attention_gate == 'branch'
    # acouplenet-blas runs ACoupleNet's global products inside blas_linear (F.linear); the plain method does not.
    import projects.acouplenet.coupled_bbox_head as head_module
    assert 'acouplenet-blas' not in bench.parse_args([]).models
    blas_model = bench.build('acouplenet-blas', 'cpu')
    seen = []
    original = head_module.linear_relu
    monkeypatch.setattr(head_module, 'linear_relu', lambda *a: seen.append(head_module._blas_only) or original(*a))
    images, sample = torch.randn(1, 3, 64, 96), bench.Inputs(argparse.Namespace(device='cpu', shape=(64, 96))).sample
    with torch.no_grad():
        blas_model._forward(images, [sample()])
        blas_model.__class__._forward(blas_model, images, [sample()])  # the unwrapped method
    assert seen == [True, True, False, False] and head_module._blas_only is False
    # acouplenet-copy keeps the default weight layout (the model's is channels-last), so the head copies the
    # pooled features.
    assert 'acouplenet-copy' not in bench.parse_args([]).models
    assert bench.build('acouplenet-copy', 'cpu').roi_head.bbox_head.global_conv.weight.is_contiguous()

    monkeypatch.delenv('THP_MEM_ALLOC_ENABLE', raising=False)
    bench.main(['--device', 'cpu', '--shape', '64', '96', '--models', 'acouplenet', 'faster-rcnn-300', '--runs', '2',
                '--warmup', '0', '--no-flops', '--profile', '--paired', '3', '--out', str(tmp_path)])
    results = json.loads((tmp_path / 'benchmark_cpu.json').read_text())
    for r in results.values():
        assert len(r['latencies_s']) == len(r['network_s']) == len(r['backbone_s']) == 2
        assert 0 < r['backbone_latency_s'] and 0 < r['network_latency_s'] and 'profile' not in r
        assert len(r['paired_network_s']) == 3 and min(r['paired_network_s']) > 0
        # One median for all: of two runs, the slower one (a time a run took, not the mean of the two).
        assert r['latency_s'] == max(r['latencies_s']) and r['network_latency_s'] == max(r['network_s'])
    profiles = (tmp_path / 'profile_cpu.txt').read_text()
    # One operator table per model; both run ResNet-101's convolutions.
    assert profiles.count('one _forward') == 2 and profiles.count('aten::conv') >= 2
    text = (tmp_path / 'benchmark_cpu.md').read_text()
    assert f'score threshold {paper_rcnn.score_thr} and NMS {paper_rcnn.nms.iou_threshold} for all' in text
    assert '| ACoupleNet R-101 |' in text and '| Faster R-CNN R-101-C4, 300 proposals |' in text
    assert 'end to end' in text and '| backbone (s) | paired network (s) |' in text
    assert f'| {statistics.median_high(results["acouplenet"]["paired_network_s"]):.4f} | ' in text
    assert 'median (the higher middle one of an even count) of 2 runs after 0 warm-up' in text
    # The table names the CPU (its family and model too) and torch's kernel level for it, which set the times.
    assert f'cpu: {cpu_name(host_info())}, ' in text.splitlines()[0]
    assert f' ({torch.backends.cpu.get_cpu_capability()}), ' in text.splitlines()[0]
    assert 'THP_MEM_ALLOC_ENABLE' not in text
    a, b = results['acouplenet']['paired_network_s'], results['faster-rcnn-300']['paired_network_s']
    low, median, high = bench.paired_ratios(b, a)
    assert f'network; paired network (one process, alternating, 3 rounds): median {median:.2f}x, quartiles ' \
           f'{low:.2f}x-{high:.2f}x (target >= 2.5x)' in text
    # Median and quartiles of the round-by-round ratios, not ratios of medians.
    assert bench.paired_ratios([2, 9, 3, 8], [1, 3, 1, 2]) == (2.75, 3.0, 3.25)
    assert bench.paired_ratios([6, 1, 4], [2, 1, 1]) == (2.0, 3.0, 3.5)
    assert bench.paired_ratios([3], [2]) == (1.5, 1.5, 1.5)
    assert bench.paired_ratios([2, 5], [1, 1]) == (2.75, 3.5, 4.25)  # interpolated, unlike the median times
    with pytest.raises(SystemExit, match='--tf32 is a CUDA precision setting.*drop --tf32 or run with --device cuda'):
        bench.main(['--device', 'cpu', '--tf32', '--out', str(tmp_path)])


def test_speed_benchmark_paired_timing_alone(tmp_path, monkeypatch):
    """--rounds 0: no per-model processes, the paired network times and their ratios only (short GPU leases);
    the header names PyTorch's huge-page setting, which the model process inherits."""
    bench = load_tool('benchmark_speed')
    with pytest.raises(SystemExit, match=r'--rounds 0 times no model in its own process.*add --paired N'):
        bench.main(['--device', 'cpu', '--rounds', '0', '--out', str(tmp_path)])
    with pytest.raises(SystemExit, match=r'--profile profiles one _forward.*drop --profile or pass --rounds 1'):
        bench.main(['--device', 'cpu', '--rounds', '0', '--paired', '2', '--profile', '--out', str(tmp_path)])
    monkeypatch.setenv('THP_MEM_ALLOC_ENABLE', '1')
    bench.main(['--device', 'cpu', '--shape', '64', '96', '--models', 'acouplenet', 'rfcn', '--rounds', '0',
                '--warmup', '0', '--paired', '3', '--out', str(tmp_path)])
    results = json.loads((tmp_path / 'benchmark_cpu.json').read_text())
    assert set(results) == {'acouplenet', 'rfcn'}
    assert all(set(r) == {'paired_network_s'} and len(r['paired_network_s']) == 3 for r in results.values())
    text = (tmp_path / 'benchmark_cpu.md').read_text()
    assert 'network only, median (the higher middle one of an even count) of 3 runs' in text
    assert text.splitlines()[0].endswith(' threads, THP_MEM_ALLOC_ENABLE=1')
    assert '| Model (cpu) | paired network (s) |' in text and 'latency (s)' not in text
    assert f'| R-FCN R-101 (local branch) | {statistics.median_high(results["rfcn"]["paired_network_s"]):.4f} |' in text
    a, r = results['acouplenet']['paired_network_s'], results['rfcn']['paired_network_s']
    low, median, high = bench.paired_ratios(a, r)
    assert (f'ACoupleNet latency / R-FCN latency: paired network (one process, alternating, 3 rounds): median '
            f'{median:.2f}x, quartiles {low:.2f}x-{high:.2f}x (target <= 1.3x)') in text


def _mirrored(bboxes, width):
    """(n, 4) boxes of an image -> the same boxes in its horizontal mirror image."""
    return np.stack([width - bboxes[:, 2], bboxes[:, 1], width - bboxes[:, 0], bboxes[:, 3]], axis=1)


def _by_score(pred):
    order = np.argsort(-np.asarray(pred['scores']), kind='stable')
    return {k: np.asarray(pred[k])[order] for k in ('bboxes', 'scores', 'labels')}


def test_flip_tta_detects_a_mirrored_image_as_the_mirror_image(shapes_checkpoint, tiny_shapes, tmp_path):
    """tools/test.py --tta (mmdet's flip TTA when the config has none): each image's detections are one NMS
    over its unflipped and flipped views, so an image and its mirror image get mirrored detections, which
    plain testing does not give (the network is not flip-equivariant), and the evaluation runs on them."""
    import mmengine
    test_tool = load_tool('test')
    val = json.loads((tiny_shapes / 'annotations' / 'instances_val.json').read_text())
    image = next(i for i in val['images'] if any(a['image_id'] == i['id'] for a in val['annotations']))
    width = image['width']
    pixels = mmcv.imread(str(tiny_shapes / 'val' / image['file_name']))
    (tmp_path / 'val').mkdir()
    mmcv.imwrite(pixels, str(tmp_path / 'val' / 'image.png'))  # lossless: the mirror is exact
    mmcv.imwrite(pixels[:, ::-1], str(tmp_path / 'val' / 'mirror.png'))
    annotations = []
    for image_id in (1, 2):
        for a in (a for a in val['annotations'] if a['image_id'] == image['id']):
            x, y, w, h = a['bbox']
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=a['category_id'],
                                    bbox=[x if image_id == 1 else width - x - w, y, w, h], area=w * h, iscrowd=0))
    (tmp_path / 'val.json').write_text(json.dumps(dict(
        images=[dict(image, id=1, file_name='image.png'), dict(image, id=2, file_name='mirror.png')],
        annotations=annotations, categories=val['categories'])))
    loader = f"dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{tmp_path}/', " \
             f"ann_file='val.json', data_prefix=dict(img='val/')))"
    config = tmp_path / 'mirror_test.py'
    config.write_text(f"_base_ = '{SHAPES_CONFIG}'\nval_dataloader = {loader}\ntest_dataloader = {loader}\n"
                      f"test_evaluator = dict(ann_file='{tmp_path}/val.json')\n")

    def detections(*extra):
        out = tmp_path / f'preds{len(extra)}.pkl'
        metrics = test_tool.main([str(config), str(shapes_checkpoint), '--work-dir', str(tmp_path / 'work'),
                                  '--out', str(out), *extra])
        assert 'coco/bbox_mAP' in metrics
        preds = sorted(mmengine.load(str(out)), key=lambda p: p['img_id'])
        return [_by_score(p['pred_instances']) for p in preds]

    plain, mirror_plain = detections()
    tta, mirror_tta = detections('--tta')
    assert 0 < len(tta['scores']) <= 100 and len(tta['scores']) == len(mirror_tta['scores'])
    np.testing.assert_array_equal(tta['labels'], mirror_tta['labels'])
    np.testing.assert_allclose(tta['scores'], mirror_tta['scores'], rtol=1e-6)
    np.testing.assert_allclose(_mirrored(tta['bboxes'], width), mirror_tta['bboxes'], atol=1e-3)
    assert len(plain['scores']) != len(mirror_plain['scores']) or \
        not np.allclose(plain['scores'], mirror_plain['scores'], rtol=1e-6)

    from projects.acouplenet.runtime import apply_tta
    wrapped = Config.fromfile(str(config))  # a dataset wrapper: the TTA pipeline goes to the inner dataset
    wrapped.test_dataloader.dataset = dict(type='RepeatDataset', times=1, dataset=wrapped.test_dataloader.dataset)
    apply_tta(wrapped)
    assert 'pipeline' not in wrapped.test_dataloader.dataset
    assert wrapped.test_dataloader.dataset.dataset.pipeline[-1]['type'] == 'TestTimeAug'
    from projects.acouplenet.runtime import set_coco_data_root
    set_coco_data_root(wrapped, str(tmp_path / 'elsewhere'))  # the data root goes to the inner dataset too
    assert 'data_root' not in wrapped.test_dataloader.dataset
    assert wrapped.test_dataloader.dataset.dataset.data_root == f'{tmp_path}/elsewhere/'
    cfg = Config.fromfile(str(config))
    cfg.test_dataloader.dataset.pipeline = cfg.test_dataloader.dataset.pipeline[:-1]  # no PackDetInputs last
    with pytest.raises(ValueError, match=r'ends with LoadAnnotations\. Add a tta_pipeline to the config'):
        apply_tta(cfg)


def test_test_tool_tests_each_branch_alone(shapes_checkpoint, tiny_shapes, tmp_path, capsys):
    """tools/test.py --branches: the coupled model, then each branch alone, one table, then the branches whose own
    top class the coupled one was, how often each was right, and, for the 'max' coupling, the branch each RoI's
    top class score came from; single-branch heads and --out refused."""
    from mmdet.registry import MODELS
    from projects.acouplenet import CoupledBBoxHead
    test_tool = load_tool('test')
    data = shapes_test_options(tiny_shapes)
    seen = []  # the branch each head call scored with (None: the coupling)
    original_forward = CoupledBBoxHead.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CoupledBBoxHead, 'forward', lambda self, *args, **kwargs: (
            seen.append(self._branch_alone) or original_forward(self, *args, **kwargs)))
        results = test_tool.main([str(SHAPES_CONFIG), str(shapes_checkpoint), '--work-dir', str(tmp_path / 'work'),
                                  '--branches', '--cfg-options', *data, 'model.roi_head.bbox_head.coupling=max'])
    metrics, agreement, max_sources, correct = results
    assert list(metrics) == ['coupled', 'local', 'global']
    assert all(set(m) == set(metrics['coupled']) and 'coco/bbox_mAP' in m for m in metrics.values())
    runs = [key for i, key in enumerate(seen) if i == 0 or seen[i - 1] != key]
    assert runs == [None, 'local', 'global'] and len(seen) == 3 * 4  # each of the 4 val images once per run
    assert list(max_sources) == ['rois', 'objects'] and list(max_sources['rois']) == ['local', 'global']
    assert sum(max_sources['rois'].values()) == pytest.approx(1)
    assert list(agreement['objects']) == ['all', 'local only', 'global only', 'none']
    assert sum(agreement['objects'].values()) == pytest.approx(1)
    # The maximum's top class is the top class of the branch it took it from: never neither branch's.
    assert agreement['rois']['none'] == 0 and agreement['rois']['all'] < 1
    out = capsys.readouterr().out
    assert '| scores of | mAP | mAP_50 |' in out and '| global | ' in out
    assert '| RoIs | all | local only | global only | none |' in out and '| RoIs | local | global |' in out
    assert f'| all RoIs | {100 * max_sources["rois"]["local"]:.1f} | {100 * max_sources["rois"]["global"]:.1f} |' in out
    assert f'| top class an object | {100 * agreement["objects"]["all"]:.1f} | ' in out
    # Every object RoI got its true class from the val images' gt boxes; where a branch's own top class is the
    # coupled one, it is right exactly where the coupling is; no RoI of the maximum is in 'none': '-'.
    objects = re.search(r'and of the (\d+) whose top class is an object class', out)[1]
    assert re.search(r'in percent of the (\d+) RoIs whose top class is an object class, by the', out)[1] == objects
    assert list(correct) == ['coupled', 'local', 'global'] and list(correct['local']) == list(agreement['objects'])
    assert correct['local']['all'] == correct['global']['all'] == correct['coupled']['all']
    assert correct['local']['local only'] == correct['coupled']['local only']
    assert correct['global']['global only'] == correct['coupled']['global only']
    assert all(rate == -1 for rate in (correct[row]['none'] for row in correct))
    right = out[out.index('| right | all | local only | global only | none |'):]
    coupled_row = '| coupled | ' + ' | '.join('-' if rate < 0 else f'{100 * rate:.1f}'  # '-': no RoI there
                                              for rate in correct['coupled'].values()) + ' |'
    assert right.split('\n')[2] == coupled_row and coupled_row.endswith('| - |') and '| global alone | ' in right
    # Two CPU processes (tools/dist_test.sh, gloo) test two images each: the counts are summed over both.
    rois = re.search(r'percent of (\d+) RoIs', out)[1]
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(29600 + os.getpid() % 1000), OMP_NUM_THREADS='1',
               CUDA_VISIBLE_DEVICES='')
    dist = subprocess.run(['bash', 'tools/dist_test.sh', str(SHAPES_CONFIG), str(shapes_checkpoint), '2', '--work-dir',
                           str(tmp_path / 'dist'), '--branches', '--cfg-options', *data,
                           'model.roi_head.bbox_head.coupling=max'],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert re.search(r'percent of (\d+) RoIs', dist.stdout)[1] == rois and int(rois) > 4
    assert re.search(r'in percent of the (\d+) RoIs whose top class is an object class', dist.stdout)[1] == objects
    assert coupled_row in dist.stdout  # the right decisions summed alike

    rfcn_config = REPO / 'configs/shapes/rfcn_r18-w32_1xb4-2k_shapes.py'
    rfcn = tmp_path / 'rfcn.pth'
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(str(rfcn_config)).model).state_dict()), rfcn)
    with pytest.raises(SystemExit, match=r'--branches: .*rfcn_r18.* has no coupled CoupledBBoxHead \(R-FCN and '
                                         r'global only have one branch\)'):
        test_tool.main([str(rfcn_config), str(rfcn), '--work-dir', str(tmp_path / 'work'), '--branches',
                        '--cfg-options', *data])
    with pytest.raises(SystemExit, match=r'--branches tests the model several times and --out'):
        test_tool.main([str(SHAPES_CONFIG), str(shapes_checkpoint), '--branches', '--out', str(tmp_path / 'a.pkl')])


def test_tools_refuse_a_device_this_machine_lacks_before_loading_anything(shapes_checkpoint, shapes_images, capsys):
    """demo, attention_stats and benchmark_speed check --device when parsing it (torch would fail deep in
    model loading with "Found no NVIDIA driver" on a CPU-only machine)."""
    import argparse

    from projects.acouplenet.runtime import device_arg
    missing_cuda = 'cuda' if not torch.cuda.is_available() else f'cuda:{torch.cuda.device_count()}'
    expected = ('CUDA is not available here' if not torch.cuda.is_available() else
                f'this machine has {torch.cuda.device_count()} CUDA device(s)')
    with pytest.raises(argparse.ArgumentTypeError, match=expected):
        device_arg(missing_cuda)
    with pytest.raises(argparse.ArgumentTypeError, match=r"'gpu' is not a device: pass cpu, cuda or cuda:N"):
        device_arg('gpu')
    with pytest.raises(argparse.ArgumentTypeError, match=r'the tools run on cpu or cuda\[:N\], not meta'):
        device_arg('meta')
    assert device_arg('cpu') == 'cpu'
    demo_argv = [shapes_images[0], '--config', str(SHAPES_CONFIG), '--checkpoint', str(shapes_checkpoint)]
    for tool, argv in (('demo', demo_argv),
                       ('attention_stats', [str(SHAPES_CONFIG), str(shapes_checkpoint)]), ('benchmark_speed', [])):
        with pytest.raises(SystemExit):
            load_tool(tool).main(argv + ['--device', missing_cuda])
        assert f'argument --device: {missing_cuda}: {expected}' in capsys.readouterr().err, tool
