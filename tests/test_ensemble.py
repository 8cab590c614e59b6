"""A model ensemble (the paper's Table II): fusing several models' detections, and tools/fuse_results.py
scoring the fusion with a config's test set and evaluator (COCO AP, VOC mAP)."""
import collections
import json
import pickle
import subprocess
import sys

import pytest
import torch

from projects.acouplenet.ensemble import fuse_detections

from .conftest import REPO, SHAPES_CONFIG, PickledCode, load_tool, shapes_test_options, write_voc_image

VOC_CONFIG = REPO / 'configs' / 'acouplenet' / 'acouplenet_r101_1xb2-ms-110k_voc0712.py'


def _dets(boxes, scores, labels):
    return dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores=torch.tensor(scores),
                labels=torch.tensor(labels))


# Model A finds a class-0 object and a class-1 one; model B the class-0 object 2 px to the right (IoU 0.905)
# and, as class 1, A's class-0 object, which a class-wise fusion keeps apart.
MODEL_A = _dets([[10, 10, 50, 50], [100, 100, 140, 140]], [1.0, 0.8], [0, 1])
MODEL_B = _dets([[12, 10, 52, 50], [10, 10, 50, 50]], [0.5, 0.3], [0, 1])


def test_weighted_boxes_fusion_against_hand_computed_boxes_and_scores():
    fused = fuse_detections([MODEL_A, MODEL_B], 'wbf', iou_thr=0.55)
    # The class-0 pair: their score-weighted mean box, their mean score; boxes one of the two models found
    # alone keep half their score.
    expected_boxes = [(1.0 * torch.tensor([10., 10, 50, 50]) + 0.5 * torch.tensor([12., 10, 52, 50])) / 1.5,
                      torch.tensor([100., 100, 140, 140]), torch.tensor([10., 10, 50, 50])]
    torch.testing.assert_close(fused['scores'], torch.tensor([0.75, 0.4, 0.15]))
    torch.testing.assert_close(fused['bboxes'], torch.stack(expected_boxes))
    assert fused['labels'].tolist() == [0, 1, 1] and fused['labels'].dtype == torch.int64
    # Weights 2 : 1 weigh the mean box and the scores, normalised by the weights' sum.
    fused = fuse_detections([MODEL_A, MODEL_B], 'wbf', weights=[2, 1], iou_thr=0.55)
    torch.testing.assert_close(fused['bboxes'][0], (2.0 * torch.tensor([10., 10, 50, 50])
                                                    + 0.5 * torch.tensor([12., 10, 52, 50])) / 2.5)
    torch.testing.assert_close(fused['scores'], torch.tensor([(2.0 + 0.5) / 2 * 2 / 3, 1.6 / 3, 0.3 / 3]))
    # Above the pair's IoU the two stay apart.
    assert len(fuse_detections([MODEL_A, MODEL_B], 'wbf', iou_thr=0.95)['scores']) == 4


def test_nms_fusion_keeps_the_best_box_of_each_object_and_class():
    fused = fuse_detections([MODEL_A, MODEL_B], 'nms', iou_thr=0.5)
    torch.testing.assert_close(fused['bboxes'], torch.tensor([[10., 10, 50, 50], [100, 100, 140, 140],
                                                              [10, 10, 50, 50]]))
    torch.testing.assert_close(fused['scores'], torch.tensor([1.0, 0.8, 0.3]))
    assert fused['labels'].tolist() == [0, 1, 1]
    # A weight scales its model's scores before the NMS: B's class-0 box now wins.
    fused = fuse_detections([MODEL_A, MODEL_B], 'nms', weights=[0.4, 1.0], iou_thr=0.5)
    torch.testing.assert_close(fused['bboxes'][0], torch.tensor([12., 10, 52, 50]))
    torch.testing.assert_close(fused['scores'], torch.tensor([0.5, 0.32, 0.3]))
    assert len(fuse_detections([MODEL_A, MODEL_B], 'nms', max_per_img=2)['scores']) == 2
    empty = _dets([], [], [])
    assert len(fuse_detections([empty, empty], 'nms')['bboxes']) == 0
    assert fuse_detections([empty, empty], 'wbf')['bboxes'].shape == (0, 4)


@pytest.mark.parametrize('kwargs, message', [
    (dict(method='soft'), r"method='soft': choose one of \('wbf', 'nms'\)"),
    (dict(conf_type='mean'), r"conf_type='mean': choose one of"),
    (dict(weights=[1.0]), r'1 weights for 2 models: give one per model'),
])
def test_fusion_rejects_a_bad_choice(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fuse_detections([MODEL_A, MODEL_B], **kwargs)


def _coco_predictions(data_root, shift=0.0, score=1.0):
    """Each val image's ground-truth boxes as predictions (moved ``shift`` px right), in tools/test.py's format."""
    with open(data_root / 'annotations' / 'instances_val.json') as f:
        coco = json.load(f)
    label = {c['id']: i for i, c in enumerate(sorted(coco['categories'], key=lambda c: c['id']))}
    results = []
    for image in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
        boxes = [[x + shift, y, x + w + shift, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        results.append(dict(img_id=image['id'], ori_shape=(image['height'], image['width']),
                            img_path=str(data_root / 'val' / image['file_name']),
                            pred_instances=_dets(boxes, [score] * len(anns), [label[a['category_id']] for a in anns])))
    return results


def _dump(results, path):
    with open(path, 'wb') as f:
        pickle.dump(results, f)
    return str(path)


def _shapes_args(data_root):
    return [str(SHAPES_CONFIG), '--cfg-options', *shapes_test_options(data_root)]


def test_fuse_results_scores_each_model_and_their_fusion_on_coco_data(tiny_shapes, tmp_path, capsys, mim):
    tool = load_tool('fuse_results')
    exact = _dump(_coco_predictions(tiny_shapes), tmp_path / 'exact.pkl')
    shifted = _dump(_coco_predictions(tiny_shapes, shift=3.0, score=0.5), tmp_path / 'shifted.pkl')
    config, *options = _shapes_args(tiny_shapes)
    rows = tool.main([config, exact, shifted, '--out', str(tmp_path / 'fused.pkl'), *options])
    exact_row, shifted_row, fused_row = rows.values()
    assert list(rows)[2] == 'fused (wbf, IoU 0.55)'
    assert exact_row['coco/bbox_mAP'] == 1.0 and shifted_row['coco/bbox_mAP'] < fused_row['coco/bbox_mAP'] < 1.0
    printed = capsys.readouterr().out
    assert '| exact | 100.0 |' in printed and '| fused (wbf, IoU 0.55) |' in printed
    # The fused boxes are the score-weighted means (1 px right of the truth), each found by both models.
    with open(tmp_path / 'fused.pkl', 'rb') as f:
        fused = pickle.load(f)
    truth = {r['img_id']: r['pred_instances'] for r in _coco_predictions(tiny_shapes)}
    for result in fused:
        order = torch.argsort(result['pred_instances']['labels'] * 1e6 + result['pred_instances']['bboxes'][:, 0])
        expected = truth[result['img_id']]
        expected_order = torch.argsort(expected['labels'] * 1e6 + expected['bboxes'][:, 0])
        torch.testing.assert_close(result['pred_instances']['bboxes'][order],
                                   expected['bboxes'][expected_order] + torch.tensor([1.0, 0, 1, 0]))
        scores = result['pred_instances']['scores']
        torch.testing.assert_close(scores, torch.full_like(scores, 0.75))
    # mmdet's own offline evaluation reads the fused file and scores it alike.
    evaluated = subprocess.run([mim, 'run', 'mmdet', 'eval_metric', config, str(tmp_path / 'fused.pkl'),
                                '--cfg-options', options[1],
                                f'val_evaluator.ann_file={tiny_shapes}/annotations/instances_val.json'],
                               cwd=REPO, capture_output=True, text=True, timeout=300)
    assert f"'coco/bbox_mAP': {fused_row['coco/bbox_mAP']}" in evaluated.stdout, evaluated.stdout + evaluated.stderr
    # NMS keeps the exact boxes, which score higher: the fusion scores what the exact model scores.
    rows = tool.main([config, exact, shifted, '--method', 'nms', '--names', 'A', 'B', *options])
    assert rows['fused (nms, IoU 0.3)'] == rows['A']  # (the config's R-CNN NMS threshold)


def test_fuse_results_reads_what_tools_test_writes(tiny_shapes, shapes_checkpoint, tmp_path):
    """An ensemble of a model with itself detects what the model detects (NMS drops each box's twin)."""
    config, *options = _shapes_args(tiny_shapes)
    out = tmp_path / 'model.pkl'
    subprocess.run([sys.executable, str(REPO / 'tools' / 'test.py'), config, str(shapes_checkpoint), '--out', str(out),
                    '--work-dir', str(tmp_path / 'work'), *options], check=True, capture_output=True, timeout=300,
                   cwd=REPO)
    fused_path = tmp_path / 'fused.pkl'
    rows = load_tool('fuse_results').main([config, str(out), str(out), '--method', 'nms', '--iou-thr', '0.99',
                                           '--out', str(fused_path), *options])
    assert len(rows) == 3  # (the same file twice: two rows, told apart by their number)
    with open(out, 'rb') as f:
        single = {r['img_id']: r['pred_instances'] for r in pickle.load(f)}
    with open(fused_path, 'rb') as f:
        fused = {r['img_id']: r for r in pickle.load(f)}
    assert set(fused) == set(single)
    for img_id, result in fused.items():
        assert result['img_path'].endswith('.jpg') and 'ori_shape' in result
        torch.testing.assert_close(result['pred_instances']['scores'], single[img_id]['scores'][:100])
        assert len(result['pred_instances']['bboxes']) == len(single[img_id]['bboxes'])


def test_fuse_results_on_voc_scores_voc_map_from_the_datasets_boxes(tmp_path):
    """tools/test.py's files hold no ground truth, which VOC's metric needs: the tool adds it from the dataset."""
    root = tmp_path / 'VOCdevkit'
    objects = {'000001': [('person', 21, 11, 80, 70), ('dog', 101, 51, 150, 110)], '000002': [('car', 11, 11, 60, 50)]}
    for image_id, boxes in objects.items():
        write_voc_image(root, 'VOC2007', image_id, boxes)
    (root / 'VOC2007' / 'ImageSets' / 'Main').mkdir(parents=True)
    (root / 'VOC2007' / 'ImageSets' / 'Main' / 'test.txt').write_text('000001\n000002\n')
    from mmdet.datasets import VOCDataset
    classes = VOCDataset.METAINFO['classes']
    # VOC's XML is 1-based: mmdet's loader subtracts 1 from the corners.
    results = [dict(img_id=image_id, ori_shape=(120, 160),
                    pred_instances=_dets([[x1 - 1, y1 - 1, x2, y2] for _, x1, y1, x2, y2 in boxes], [0.9] * len(boxes),
                                         [classes.index(name) for name, *_ in boxes]))
               for image_id, boxes in objects.items()]
    exact = _dump(results, tmp_path / 'exact.pkl')
    results[0]['pred_instances'] = _dets([], [], [])  # the second model misses the first image's objects
    partial = _dump(results, tmp_path / 'partial.pkl')
    rows = load_tool('fuse_results').main([str(VOC_CONFIG), exact, partial, '--cfg-options',
                                           f'test_dataloader.dataset.data_root={root}/'])
    assert rows['exact']['pascal_voc/mAP'] == pytest.approx(1.0)
    assert rows['partial']['pascal_voc/mAP'] == pytest.approx(1 / 3)  # car found, person and dog missed
    assert rows['fused (wbf, IoU 0.55)']['pascal_voc/mAP'] == pytest.approx(1.0)


def test_fuse_results_refuses_bad_inputs_naming_the_fix(tiny_shapes, shapes_checkpoint, tmp_path):
    tool = load_tool('fuse_results')
    config, *options = _shapes_args(tiny_shapes)
    exact = _dump(_coco_predictions(tiny_shapes), tmp_path / 'exact.pkl')

    def refused(*argv):
        with pytest.raises(SystemExit) as caught:
            tool.main([config, *argv, *options])
        return str(caught.value)

    fewer = _dump(_coco_predictions(tiny_shapes)[1:], tmp_path / 'fewer.pkl')
    message = refused(exact, fewer)
    assert 'fewer.pkl holds 3 images, the config\'s test set 4: 1 of the test set missing' in message
    assert 'test every model on the same test set' in message
    for path in (str(shapes_checkpoint), _dump(PickledCode(tmp_path / 'pwned_marker'), tmp_path / 'exploit.pkl')):
        message = refused(exact, path)
        assert 'is not a readable predictions file' in message and 'tools/test.py CONFIG CHECKPOINT --out' in message
    assert 'refusing posix.system' in refused(exact, str(tmp_path / 'exploit.pkl'))
    assert not (tmp_path / 'pwned_marker').exists()
    assert 'holds no detections of the form' in refused(exact, _dump([dict(img_id=1)], tmp_path / 'odd.pkl'))
    many_classes = _coco_predictions(tiny_shapes)
    many_classes[0]['pred_instances']['labels'][:] = 80
    coco80 = _dump(many_classes, tmp_path / 'coco80.pkl')
    assert 'has class 80, but the config\'s test set has 6 classes' in refused(exact, coco80)


@pytest.mark.parametrize('extra, message', [
    ([], 'an ensemble fuses two or more'),
    (['--weights', '1'], '--weights: 1 given for 2 results files'),
    (['--weights', '1', '0'], 'every weight must be above 0'),
    (['--iou-thr', '1.5'], 'must lie between 0 and 1'),
    (['--out', 'fused.json'], 'must end in .pkl'),
    (['missing.pkl'], 'missing.pkl: not found'),
    (['--out', 'a.pkl/fused.pkl'], "--out's folder"),  # (a file in the way: checked before any work)
])
def test_fuse_results_arguments(tmp_path, capsys, extra, message):
    files = [_dump([], tmp_path / 'a.pkl')] + ([] if message.startswith('an ensemble') else
                                               [_dump([], tmp_path / 'b.pkl')])
    extra = [str(tmp_path / e) if e.endswith('.pkl') else e for e in extra]
    with pytest.raises(SystemExit) as caught:
        load_tool('fuse_results').parse_args([str(SHAPES_CONFIG), *files, *extra])
    assert message in capsys.readouterr().err + str(caught.value)


def test_predictions_files_load_tensors_arrays_and_plain_values_only(tmp_path):
    import numpy as np

    from projects.acouplenet.safe_loading import load_predictions_file
    contents = [dict(img_id='000001', scale_factor=(np.float32(0.5), np.float64(2.0)), flags=np.array([1, 2]),
                     pred_instances=dict(bboxes=torch.rand(3, 4), labels=torch.tensor([0, 1, 2])))]
    loaded = load_predictions_file(_dump(contents, tmp_path / 'ok.pkl'))
    assert loaded[0]['scale_factor'] == (0.5, 2.0) and loaded[0]['flags'].tolist() == [1, 2]
    torch.testing.assert_close(loaded[0]['pred_instances']['bboxes'], contents[0]['pred_instances']['bboxes'])
    # an object of another class, a call
    for bad in ([collections.Counter(a=1)], [PickledCode(tmp_path / 'pwned_marker')]):
        with pytest.raises(ValueError, match='refusing'):
            load_predictions_file(_dump(bad, tmp_path / 'bad.pkl'))
    assert not (tmp_path / 'pwned_marker').exists()
    (tmp_path / 'cut.pkl').write_bytes((tmp_path / 'ok.pkl').read_bytes()[:40])
    with pytest.raises(ValueError, match='cut.pkl is not a readable predictions file'):
        load_predictions_file(str(tmp_path / 'cut.pkl'))
