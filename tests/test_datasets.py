"""The real dataset formats, on small datasets the tests write: COCO instances feeding the attention
targets with the paper's multi-scale pipeline, and VOC07+12 with SBD instance masks ("07+12+S")."""
import argparse
import json
import os

import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import pseudo_collate
from scipy.io import savemat

from mmdet.evaluation import VOCMetric
from mmdet.registry import DATASETS, MODELS
from projects.acouplenet import attention_targets
from projects.acouplenet.runtime import set_coco_data_root
from projects.acouplenet.shapes import CLASSES as SHAPES_CLASSES

from .conftest import REPO, shrink_model_cfg, tiny_train_cfg, write_voc_image

BASES = REPO / 'configs' / '_base_' / 'datasets'
COCO_CONFIG = REPO / 'configs' / 'acouplenet' / 'acouplenet_r101_8xb2-ms-180k_coco.py'
VOC_CONFIG = REPO / 'configs' / 'acouplenet' / 'acouplenet_r101_1xb2-ms-110k_voc0712.py'


def _train_dataset(config, data_root, **dataset_overrides):
    cfg = Config.fromfile(str(config))
    dataset = cfg.train_dataloader.dataset
    for part in dataset.get('datasets', [dataset]):  # a ConcatDataset's parts, or the dataset itself
        part.data_root = str(data_root) + '/'
        part.update(dataset_overrides)
    return DATASETS.build(dataset)


def test_coco_masks_feed_the_attention_targets(tiny_shapes):
    """The paper's COCO pipeline on a COCO-format dataset with masks (the generated one)."""
    dataset = _train_dataset(BASES / 'coco_instance_ms.py', tiny_shapes, ann_file='annotations/instances_train.json',
                             data_prefix=dict(img='train/'), filter_cfg=dict(filter_empty_gt=True),
                             metainfo=dict(classes=SHAPES_CLASSES))
    shorter, longer = set(), []
    for i in range(len(dataset)):
        item = dataset[i]
        sample = item['data_samples']
        h, w = sample.img_shape
        shorter.add(min(h, w))
        longer.append(max(h, w))
        masks = sample.gt_instances.masks
        assert len(masks) == len(sample.gt_instances) > 0 and masks.masks.shape[1:] == (h, w)
        # the targets are the union of the masks: inside the boxes, and smaller than them
        (target, ), fallback = attention_targets([sample.gt_instances], (h, w), [(h, w)], threshold=None)
        (boxes, ), _ = attention_targets([sample.gt_instances], (h, w), [(h, w)], target_source='box',
                                         threshold=None)
        assert fallback == [] and 0 < target.sum() < boxes.sum()
        assert (target > boxes).float().mean() < 0.005  # (resizing may move a mask edge by a pixel)
    assert shorter <= {480, 576, 600, 672, 768, 864} and max(longer) <= 1000


# -- VOC + SBD ----------------------------------------------------------------------------------------
def _sbd_instances(sbd_root, image_id, masks, categories, size=(120, 160)):
    """Write an SBD inst/<id>.mat: Segmentation holds instance indices 1..n."""
    (sbd_root / 'inst').mkdir(parents=True, exist_ok=True)
    seg = np.zeros(size, np.uint8)
    for index, mask in enumerate(masks, start=1):
        seg[mask] = index
    savemat(str(sbd_root / 'inst' / f'{image_id}.mat'),
            {'GTinst': {'Segmentation': seg, 'Categories': np.array(categories, np.uint8).reshape(-1, 1),
                        'Boundaries': np.zeros((len(categories), 1), object)}})


@pytest.fixture()
def voc_sbd(tmp_path):
    root = tmp_path / 'VOCdevkit'
    # VOC2007: one image with SBD masks for its person (a disc) but not for its dog; one without SBD.
    write_voc_image(root, 'VOC2007', '000001', [('person', 21, 11, 80, 70), ('dog', 101, 51, 150, 110)])
    write_voc_image(root, 'VOC2007', '000002', [('car', 11, 11, 60, 50)])
    write_voc_image(root, 'VOC2012', '2008_000003', [('cat', 31, 21, 130, 100)])
    for year, ids in (('VOC2007', ['000001', '000002']), ('VOC2012', ['2008_000003'])):
        (root / year / 'ImageSets' / 'Main').mkdir(parents=True)
        (root / year / 'ImageSets' / 'Main' / 'trainval.txt').write_text('\n'.join(ids) + '\n')
        (root / year / 'ImageSets' / 'Main' / 'test.txt').write_text('\n'.join(ids) + '\n')
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 40) ** 2 + (xx - 50) ** 2 <= 28 ** 2  # inside the person box
    cat = np.zeros((120, 160), bool)
    cat[30:90, 40:120] = True
    sbd = tmp_path / 'benchmark_RELEASE' / 'dataset'
    _sbd_instances(sbd, '000001', [disc], [15])  # 15 = person
    _sbd_instances(sbd, '2008_000003', [cat], [8])  # 8 = cat
    return root, sbd, disc


def test_sbd_converter_and_voc_dataset_with_masks(voc_sbd, monkeypatch):
    import subprocess
    import sys

    from projects.acouplenet import datasets as datasets_module
    logged = []
    monkeypatch.setattr(datasets_module, 'print_log', lambda msg, **kw: logged.append(msg))
    root, sbd, disc = voc_sbd
    (root / 'SBD').mkdir()
    out = subprocess.run([sys.executable, str(REPO / 'tools' / 'dataset_converters' / 'sbd_to_masks.py'), str(sbd),
                          str(root / 'SBD' / 'sbd_instances.json')], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert '2 instances in 2 images' in out.stdout

    dataset = _train_dataset(BASES / 'voc0712_sbd_ms.py', root)
    assert len(dataset) == 3
    # VOC2007: the person's SBD mask, boxes for the dog and the car; VOC2012: the cat's SBD mask.
    assert [m.split('): ')[1] for m in logged] == [
        '2 of 3 objects have no usable instance mask (none, or polygons with fewer than 3 points); their boxes '
        'stand in as their masks (attention targets)', 'SBD masks for 1 of 3 objects in 1 of 2 images',
        'SBD masks for 1 of 1 objects in 1 of 1 images']
    by_id = {}
    for i in range(len(dataset)):
        sample = dataset[i]['data_samples']
        by_id[os.path.basename(sample.img_path)] = sample
    person_img = by_id['000001.jpg']
    h, w = person_img.img_shape
    masks = person_img.gt_instances.masks.masks
    scale = h / 120
    labels = person_img.gt_instances.labels.tolist()
    person = masks[labels.index(14)]  # 14 = person (0-based)
    dog = masks[labels.index(11)]
    assert abs(person.sum() - disc.sum() * scale * scale) / (disc.sum() * scale * scale) < 0.1  # the disc
    box = person_img.gt_instances.bboxes.tensor[labels.index(11)]
    assert abs(dog.sum() - (box[2] - box[0]) * (box[3] - box[1])) / dog.sum() < 0.1  # the dog: its box
    # shorter side from the paper's scales, unless the longer side hit its 1000 limit first
    assert (min(h, w) in {480, 576, 600, 672, 768, 864} or max(h, w) == 1000) and max(h, w) <= 1000
    car = by_id['000002.jpg']  # no SBD: box masks
    assert len(car.gt_instances.masks) == 1


def test_voc_metric_on_the_voc_test_split(voc_sbd):
    root, _, _ = voc_sbd
    cfg = Config.fromfile(str(BASES / 'voc0712_sbd.py'))
    cfg.test_dataloader.dataset.data_root = str(root) + '/'
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    metric = VOCMetric(metric='mAP', eval_mode='11points')
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        item = dataset[i]
        sample = item['data_samples']
        gt = sample.gt_instances
        scale = torch.tensor(sample.scale_factor).repeat(2)
        prediction = dict(img_id=sample.img_id, ori_shape=sample.ori_shape,
                          pred_instances=dict(bboxes=gt.bboxes.tensor / scale, scores=torch.ones(len(gt)),
                                              labels=gt.labels),
                          gt_instances=dict(bboxes=gt.bboxes.tensor / scale, labels=gt.labels),
                          ignored_instances=dict(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)))
        metric.process({}, [prediction])
    assert metric.evaluate(len(dataset))['pascal_voc/mAP'] == pytest.approx(1.0)
    # A cut test image is named, not evaluated half grey (OpenCV decodes it without error).
    path = root / 'VOC2007' / 'JPEGImages' / '000002.jpg'
    path.write_bytes(path.read_bytes()[:-200])
    index = next(i for i in range(len(dataset)) if dataset.get_data_info(i)['img_path'] == str(path))
    with pytest.raises(ValueError, match=r'000002\.jpg is a truncated JPEG.*replace the file'):
        dataset[index]


@pytest.mark.parametrize('step_names', ['plain', 'scoped'])
def test_test_tool_flip_tta_keeps_the_voc_gt_boxes_in_the_original_frame(voc_sbd, step_names):
    """tools/test.py --tta on VOC: both views of a test image, flipped and not, carry the plain test's gt boxes, in
    the original image's frame where VOCMetric compares them with the rescaled detections and where --branches
    flips them with the view, not flipped about the resized image's width."""
    from projects.acouplenet.runtime import apply_tta
    root, _, _ = voc_sbd
    cfg = Config.fromfile(str(VOC_CONFIG))
    cfg.test_dataloader.dataset.data_root = str(root) + '/'
    if step_names == 'scoped':
        for step in cfg.test_dataloader.dataset.pipeline:
            if step.type in ('LoadAnnotations', 'PackDetInputs'):
                step.type = f'mmdet.{step.type}'
    plain = DATASETS.build(cfg.test_dataloader.dataset)
    tta = DATASETS.build(apply_tta(cfg).test_dataloader.dataset)
    for i in range(len(plain)):
        sample = plain[i]['data_samples']
        views = tta[i]['data_samples']
        assert [view.flip for view in views] == [True, False] and sample.img_shape != sample.ori_shape
        for view in views:
            assert view.img_shape == sample.img_shape
            torch.testing.assert_close(view.gt_instances.bboxes.tensor, sample.gt_instances.bboxes.tensor)
            torch.testing.assert_close(view.gt_instances.labels, sample.gt_instances.labels)
        assert torch.equal(tta[i]['inputs'][0], tta[i]['inputs'][1].flip(-1))  # the image itself is flipped


class _OracleDetector(torch.nn.Module):
    """Finds each object of a test image: its gt boxes in the original frame, flipped for a flipped view."""

    def __init__(self, gts):
        super().__init__()
        self.gts = gts  # img_id -> the plain test's gt_instances

    def test_step(self, data):
        from mmdet.structures.bbox import bbox_flip
        from mmengine.structures import InstanceData
        for sample in data['data_samples']:
            gt = self.gts[sample.img_id]
            boxes = gt.bboxes.tensor
            if sample.flip:
                boxes = bbox_flip(boxes, sample.ori_shape, sample.flip_direction)
            sample.pred_instances = InstanceData(bboxes=boxes, scores=torch.ones(len(boxes)), labels=gt.labels)
        return data['data_samples']


def test_mmdet_test_py_flip_tta_evaluates_voc_on_the_gt_boxes_as_loaded(voc_sbd):
    """`mim test --tta` (mmdet's tools/test.py) on a VOC config: mmdet's default TTA pipeline flips the first view,
    gt boxes included (about the resized image's width), and its DetTTAModel returns that view's sample; the
    configs' UnflippedViewTTAModel returns the unflipped view's, so a detector that finds every object scores
    mAP 1, which it does not with DetTTAModel."""
    root, _, _ = voc_sbd
    cfg = Config.fromfile(str(VOC_CONFIG))
    cfg.test_dataloader.dataset.data_root = str(root) + '/'
    assert cfg.tta_model.type == 'UnflippedViewTTAModel' and 'tta_pipeline' not in cfg
    plain = DATASETS.build(cfg.test_dataloader.dataset)
    # The TTA pipeline as mmdet 3.3's tools/test.py builds it for a config without one.
    pipeline = cfg.test_dataloader.dataset.pipeline[:-1] + [dict(type='TestTimeAug', transforms=[
        [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
        [dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor',
                                               'flip', 'flip_direction'))]])]
    tta = DATASETS.build(dict(cfg.test_dataloader.dataset, pipeline=pipeline))
    gts = {plain[i]['data_samples'].img_id: plain[i]['data_samples'].gt_instances for i in range(len(plain))}
    ours = MODELS.build(dict(cfg.tta_model, module=_OracleDetector(gts)))
    assert ours.tta_cfg == dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)  # mmdet's test.py's
    mmdet_model = MODELS.build(dict(type='DetTTAModel', tta_cfg=ours.tta_cfg, module=ours.module))
    mean_ap = {}
    for model in (ours, mmdet_model):
        metric = VOCMetric(metric='mAP', eval_mode='11points')
        metric.dataset_meta = tta.metainfo
        for i in range(len(tta)):
            merged, = model.test_step(pseudo_collate([tta[i]]))
            assert len(merged.pred_instances) == len(gts[merged.img_id])  # the two views' boxes, merged by NMS
            metric.process({}, [merged.to_dict()])
        mean_ap[type(model).__name__] = metric.evaluate(len(tta))['pascal_voc/mAP']
    assert mean_ap['UnflippedViewTTAModel'] == pytest.approx(1.0)
    assert mean_ap['DetTTAModel'] < 0.5


def test_voc_batch_trains_acouplenet_with_sbd_masks(voc_sbd, tmp_path):
    import subprocess
    import sys
    root, sbd, _ = voc_sbd
    (root / 'SBD').mkdir()
    subprocess.run([sys.executable, str(REPO / 'tools' / 'dataset_converters' / 'sbd_to_masks.py'), str(sbd),
                    str(root / 'SBD' / 'sbd_instances.json')], check=True, capture_output=True, timeout=120)
    config = VOC_CONFIG
    dataset = _train_dataset(config, root)
    cfg = Config.fromfile(str(config))
    model = MODELS.build(shrink_model_cfg(cfg.model))
    model.init_weights()
    model.train()
    data = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert {'loss_att_s4', 'loss_att_s8', 'loss_att_s16'} <= set(losses)
    assert all(torch.isfinite(v).all() for k, v in losses.items() if k.startswith('loss_att'))


def test_voc_objects_whose_names_are_not_classes_are_counted_in_a_log_line(voc_sbd, monkeypatch):
    from mmdet.datasets import VOCDataset
    from projects.acouplenet import datasets as datasets_module
    logged = []
    monkeypatch.setattr(datasets_module, 'print_log', lambda msg, **kw: logged.append(msg))
    root, _, _ = voc_sbd
    misspelt = tuple('dgo' if name == 'dog' else name for name in VOCDataset.METAINFO['classes'])
    dataset = _train_dataset(BASES / 'voc0712_sbd.py', root, sbd_ann_file=None, metainfo=dict(classes=misspelt))
    assert sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset))) == 3  # the dog left out
    assert [m.split('): ')[1] for m in logged if 'left out' in m] == [
        "left out 1 object(s) whose name is not one of the classes: dog (1); check metainfo=dict(classes=...) "
        "against the XML files' <name>s if they should count"]
    assert 'VOC2007' in [m for m in logged if 'left out' in m][0]


def test_missing_sbd_file_names_the_converter(tmp_path, voc_sbd):
    root, _, _ = voc_sbd
    with pytest.raises(FileNotFoundError, match='sbd_to_masks.py'):
        _train_dataset(BASES / 'voc0712_sbd.py', root)
    # A wrong data_root is named first, not taken for a missing SBD file.
    with pytest.raises(FileNotFoundError, match=r"VOCSBDDataset: ann_file \S*/elsewhere/VOC2007/ImageSets/Main/"
                                                r"trainval.txt not found \(data_root .*data_root=DIR"):
        _train_dataset(BASES / 'voc0712_sbd.py', tmp_path / 'elsewhere')


def test_sbd_converter_lists_the_instances_it_leaves_out(tmp_path):
    import subprocess
    import sys
    sbd = tmp_path / 'dataset'
    person, other = np.zeros((120, 160), bool), np.zeros((120, 160), bool)
    person[10:50, 20:60] = True
    other[60:100, 80:140] = True
    # instance 2 has category 25 (VOC has 20), instance 3 no pixels
    _sbd_instances(sbd, '000001', [person, other, np.zeros((120, 160), bool)], [15, 25, 8])
    out = subprocess.run([sys.executable, str(REPO / 'tools' / 'dataset_converters' / 'sbd_to_masks.py'), str(sbd),
                          str(tmp_path / 'sbd.json')], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "000001.mat: instance 2 has category 25, not one of VOC's 1-20" in out.stderr
    assert '000001.mat: instance 3 has no pixels' in out.stderr
    assert '1 instances in 1 images (2 instance(s) skipped, listed above' in out.stdout
    written = json.loads((tmp_path / 'sbd.json').read_text())['images']['000001']['instances']
    assert [i['category'] for i in written] == ['person']


# -- COCO, the paper's final protocol: train + val -> test-dev ----------------------------------------
COCO_CATEGORY_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
                     + [67, 70] + list(range(72, 83)) + list(range(84, 91)))  # COCO's 80 ids, with its gaps


@pytest.fixture()
def coco_layout(tiny_shapes, tmp_path):
    """The shapes data in COCO 2017's layout and category ids: train2017, val2017 and an unannotated
    test-dev2017 (image_info_test-dev2017.json: images and categories only, as COCO ships it)."""
    from mmdet.datasets import CocoDataset
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    categories = [dict(id=i, name=name) for i, name in zip(COCO_CATEGORY_IDS, CocoDataset.METAINFO['classes'])]
    for split, source in (('train2017', 'train'), ('val2017', 'val'), ('test2017', 'val')):
        data = json.loads((tiny_shapes / 'annotations' / f'instances_{source}.json').read_text())
        (root / split).symlink_to(tiny_shapes / source, target_is_directory=True)
        shape_ids = sorted(c['id'] for c in data['categories'])  # shape class k -> COCO's k-th category
        for ann in data['annotations']:
            ann['category_id'] = COCO_CATEGORY_IDS[shape_ids.index(ann['category_id'])]
        data['categories'] = categories
        if split == 'test2017':
            name = 'image_info_test-dev2017.json'
            data = dict(images=data['images'], categories=categories)
        else:
            name = f'instances_{split}.json'
        (root / 'annotations' / name).write_text(json.dumps(data))
    return root


def test_coco_paper_configs_train_on_train_and_val_and_write_test_dev_detections(coco_layout, tmp_path):
    """Table IX's protocol: the union of train2017 and val2017 for training, no validation on images it trains
    on, and test-dev detections written for the evaluation server, with COCO's category ids."""
    from mmengine.runner import Runner
    for name in ('acouplenet_r101_8xb2-ms-180k_coco', 'couplenet_r101_4xb1-ms-580k_coco'):
        cfg = Config.fromfile(str(REPO / 'configs' / 'acouplenet' / f'{name}.py'))
        assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
        assert cfg.test_evaluator.format_only and name in cfg.test_evaluator.outfile_prefix

    cfg = tiny_train_cfg(coco_layout, tmp_path / 'work', iters=2, config=COCO_CONFIG)
    cfg.model = shrink_model_cfg(cfg.model)
    cfg.test_evaluator.outfile_prefix = str(tmp_path / 'out' / 'detections_test-dev2017_acouplenet_results')
    runner = Runner.from_cfg(cfg)
    # set_coco_data_root (in tiny_train_cfg) pointed each part of the ConcatDataset at the data
    train = runner.train_dataloader.dataset
    annotated = {split: {img['file_name'] for img in json.loads(
        (coco_layout / 'annotations' / f'instances_{split}.json').read_text())['images']} for split in
        ('train2017', 'val2017')}
    used = {}
    for i in range(len(train)):
        img_path = train.get_data_info(i)['img_path']
        used.setdefault(os.path.basename(os.path.dirname(img_path)), set()).add(os.path.basename(img_path))
    assert set(used) == {'train2017', 'val2017'}
    assert all(used[split] <= annotated[split] for split in used)
    runner.train()
    assert runner.val_loop is None and runner.iter == 2
    metrics = runner.test()
    assert metrics == {}  # format only: test-dev has no annotations to score against

    images = {img['id']: img for img in json.loads(
        (coco_layout / 'annotations' / 'image_info_test-dev2017.json').read_text())['images']}
    detections = json.loads((tmp_path / 'out' / 'detections_test-dev2017_acouplenet_results.bbox.json').read_text())
    assert {d['image_id'] for d in detections} == set(images)  # random weights: every image gets boxes
    assert {d['category_id'] for d in detections} <= set(COCO_CATEGORY_IDS)
    for d in detections:
        x, y, w, h = d['bbox']
        img = images[d['image_id']]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= img['width'] + 0.01 and y + h <= img['height'] + 0.01  # in the original image's pixels
        assert 0 <= d['score'] <= 1

    # The README's overrides that score val2017 instead, parsed as tools/test.py parses --cfg-options.
    overrides = ('test_dataloader.dataset.ann_file=annotations/instances_val2017.json '
                 'test_dataloader.dataset.data_prefix.img=val2017/ test_evaluator.format_only=False '
                 'test_evaluator.ann_file=data/coco/annotations/instances_val2017.json')
    assert overrides in ' '.join((REPO / 'README.md').read_text().split())
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg = tiny_train_cfg(coco_layout, tmp_path / 'work_val', iters=2, config=COCO_CONFIG)
    cfg.model = shrink_model_cfg(cfg.model)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *overrides.split()]).cfg_options)
    set_coco_data_root(cfg, str(coco_layout))  # the evaluator's ann_file, as the config's, under data/coco/
    metrics = Runner.from_cfg(cfg).test()
    assert 0 <= metrics['coco/bbox_mAP'] <= 1  # scored against val2017's annotations
