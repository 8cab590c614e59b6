"""Bad input, faults and numerical safety: each gives a clear error naming the problem and the fix, or a
logged skip, and loses nothing."""
import io
import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import roi_align, roi_pool
from mmengine.config import Config
from mmengine.runner import Runner

from mmdet.registry import DATASETS, MODELS
from projects.acouplenet import PSRoIExtractor, context_rois
from projects.acouplenet import datasets as datasets_module
from projects.acouplenet.fileio import AtomicLocalBackend, atomic_write
from projects.acouplenet.roi_extractors import GatherRoIAlign, RangeMaxRoIPool
from projects.acouplenet.safe_loading import assert_checkpoint_fits

from .conftest import SHAPES_CONFIG, PickledCode, make_sample, shrink_model_cfg, tiny_train_cfg


@pytest.fixture()
def logged(monkeypatch):
    """Messages the project logs through print_log."""
    messages = []
    monkeypatch.setattr(datasets_module, 'print_log', lambda msg, **kw: messages.append(msg))
    return messages


# -- images ----------------------------------------------------------------------------------------
def _jpeg(path, shape=(60, 80, 3)):
    cv2.imwrite(str(path), np.random.RandomState(0).randint(0, 255, shape, np.uint8))
    return path


def _coco(tmp_path, images, annotations, name='ann.json'):
    categories = [dict(id=1, name='face-ellipse'), dict(id=2, name='face-box')]
    data = dict(images=images, annotations=annotations, categories=categories)
    (tmp_path / name).write_text(json.dumps(data))
    return str(tmp_path / name)


def _dataset(tmp_path, ann_file, pipeline, **kwargs):
    return DATASETS.build(dict(type='CheckedCocoDataset', data_root=str(tmp_path), ann_file=ann_file,
                               data_prefix=dict(img=''), metainfo=dict(classes=('face-ellipse', 'face-box')),
                               filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline, **kwargs))


LOAD_IMAGE = [dict(type='LoadImageFromFile'), dict(type='PackDetInputs')]


def _one_image_dataset(tmp_path, file_name, **kwargs):
    images = [dict(id=1, file_name=file_name, height=60, width=80)]
    return _dataset(tmp_path, _coco(tmp_path, images, [], name=f'{file_name}.json'), LOAD_IMAGE, **kwargs)


def test_corrupt_truncated_and_missing_images_are_skipped_with_a_log_line_in_training(tmp_path, logged):
    (tmp_path / 'corrupt.jpg').write_bytes(b'\xff\xd8 not really a jpeg \xff\xd9')
    (tmp_path / 'truncated.jpg').write_bytes(_jpeg(tmp_path / 'whole.jpg').read_bytes()[:-300])
    assert cv2.imread(str(tmp_path / 'truncated.jpg')) is not None  # OpenCV would hand back a half-grey image
    for name, why in (('corrupt.jpg', 'cannot be decoded'), ('truncated.jpg', 'truncated JPEG'),
                      ('missing.jpg', 'does not exist')):
        dataset = _one_image_dataset(tmp_path, name)
        assert dataset.prepare_data(0) is None  # mmengine then draws another index
        assert why in logged[-1] and str(tmp_path / name) in logged[-1] and 'Replace the file' in logged[-1]
        with pytest.raises(ValueError, match=rf'{name} .*{why}.*replace the file or remove it'):
            _one_image_dataset(tmp_path, name, skip_bad_images=False).prepare_data(0)
        with pytest.raises(ValueError, match=rf'{name} .*{why}'):  # testing never skips
            _one_image_dataset(tmp_path, name, test_mode=True).prepare_data(0)
    assert _one_image_dataset(tmp_path, 'whole.jpg')[0]['inputs'].shape == (3, 60, 80)


class _FailingTransform:
    """A pipeline step that fails on any image."""

    def __call__(self, results):
        raise RuntimeError('a bug in a transform')


def test_a_pipeline_error_on_a_good_image_is_not_taken_for_a_bad_image(tmp_path, logged):
    _jpeg(tmp_path / 'whole.jpg')
    dataset = _one_image_dataset(tmp_path, 'whole.jpg')
    dataset.pipeline.transforms.insert(1, _FailingTransform())
    with pytest.raises(RuntimeError, match='a bug in a transform'):
        dataset.prepare_data(0)
    assert not logged


def test_a_missing_annotation_file_says_where_the_data_goes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CheckedCocoDataset: ann_file \S*/nothere.json not found \(data_root "
                                                r".*README's \"Data\" paragraph.*tools/generate_shapes.py DIR"):
        _dataset(tmp_path, 'nothere.json', LOAD_IMAGE)


@pytest.mark.parametrize('test_mode', [False, True])
def test_a_missing_image_folder_stops_at_once_naming_it(tmp_path, logged, test_mode):
    # A wrong data_prefix: not a bad image to skip (and to skip again, until mmengine gives up after 1000 tries).
    images = [dict(id=1, file_name='wrong/a.jpg', height=60, width=80)]
    dataset = _dataset(tmp_path, _coco(tmp_path, images, []), LOAD_IMAGE, test_mode=test_mode)
    with pytest.raises(FileNotFoundError, match=r"image folder \S*/wrong does not exist \(for \S*/wrong/a.jpg\); set "
                                                r"the config's data_root and data_prefix"):
        dataset[0]
    assert not logged


def test_truncated_png_is_caught(tmp_path):
    path = tmp_path / 'a.png'
    cv2.imwrite(str(path), np.zeros((40, 40, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match='truncated PNG'):
        _one_image_dataset(tmp_path, 'a.png', skip_bad_images=False).prepare_data(0)


@pytest.mark.parametrize('channels', [1, 4])
def test_grayscale_and_rgba_images_load_as_bgr(tmp_path, channels):
    path = tmp_path / f'img{channels}.png'
    cv2.imwrite(str(path), np.full((30, 50, channels) if channels > 1 else (30, 50), 200, np.uint8))
    assert _one_image_dataset(tmp_path, path.name)[0]['inputs'].shape == (3, 30, 50)


def test_dataset_draws_another_image_when_one_is_corrupt(tmp_path, logged):
    _jpeg(tmp_path / 'good.jpg')
    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    images = [dict(id=1, file_name='bad.jpg', height=60, width=80),
              dict(id=2, file_name='good.jpg', height=60, width=80)]
    ann_file = _coco(tmp_path, images, [dict(id=1, image_id=2, category_id=1, bbox=[5, 5, 20, 20], area=400,
                                             iscrowd=0)])
    dataset = _dataset(tmp_path, ann_file, [dict(type='LoadImageFromFile'),
                                            dict(type='LoadAnnotations', with_bbox=True),
                                            dict(type='PackDetInputs')])
    item = dataset[0]
    assert item['data_samples'].img_path.endswith('good.jpg')
    assert any('bad.jpg' in m and 'skipping' in m for m in logged)


def test_class_names_that_do_not_follow_the_coco_file_are_refused(tmp_path):
    images = [dict(id=1, file_name='a.jpg', height=60, width=80)]
    box = dict(id=1, image_id=1, category_id=2, bbox=[5, 5, 20, 20], area=400, iscrowd=0)  # a face-box
    ann_file = _coco(tmp_path, images, [box])  # categories: face-ellipse (id 1), face-box (id 2)

    def labels(dataset_type, classes):
        dataset = DATASETS.build(dict(type=dataset_type, data_root=str(tmp_path), ann_file=ann_file,
                                      data_prefix=dict(img=''), metainfo=dict(classes=classes), pipeline=[]))
        return [classes[instance['bbox_label']] for instance in dataset.get_data_info(0)['instances']]

    # Why: mmdet labels by the file's order and names by the config's, silently.
    assert labels('CocoDataset', ('face-box', 'face-ellipse')) == ['face-ellipse']
    assert labels('CocoDataset', ('face-elipse', 'face-box')) == ['face-elipse']
    with pytest.raises(ValueError, match=r"ann.json lists these categories in another order: .* list the classes "
                                         r"as face-ellipse, face-box \(metainfo=dict\(classes=...\) in the config\)"):
        labels('CheckedCocoDataset', ('face-box', 'face-ellipse'))
    with pytest.raises(ValueError, match=r"ann.json has no category named 'face-elipse': .* name the classes as the "
                                         r"file does: face-ellipse, face-box"):
        labels('CheckedCocoDataset', ('face-elipse', 'face-box'))
    assert labels('CheckedCocoDataset', ('face-ellipse', 'face-box')) == ['face-box']
    assert labels('CheckedCocoDataset', ('face-box', )) == ['face-box']  # a subset, in the file's order


def test_dataset_reports_the_annotations_it_drops(tmp_path, logged):
    _jpeg(tmp_path / 'a.jpg')
    anns = [
        dict(id=1, image_id=1, category_id=1, bbox=[5, 5, 20, 20], area=400, iscrowd=0),
        dict(id=2, image_id=1, category_id=1, bbox=[5, 5, 0, 20], area=0, iscrowd=0),  # zero width
        dict(id=3, image_id=1, category_id=2, bbox=[200, 200, 10, 10], area=100, iscrowd=0),  # outside
        dict(id=4, image_id=1, category_id=2, bbox=[70, 50, 30, 30], area=900, iscrowd=0),  # partly outside
    ]
    ann_file = _coco(tmp_path, [dict(id=1, file_name='a.jpg', height=60, width=80)], anns)
    dataset = _dataset(tmp_path, ann_file, [dict(type='LoadImageFromFile'),
                                            dict(type='LoadAnnotations', with_bbox=True),
                                            dict(type='Resize', scale=(80, 60), keep_ratio=True),
                                            dict(type='PackDetInputs')])
    assert len(dataset.get_data_info(0)['instances']) == 2
    assert any('dropped 2 annotation(s)' in m and 'zero-size box' in m and 'box outside its image' in m
               and 'annotation 2 of a.jpg' in m for m in logged)
    boxes = dataset[0]['data_samples'].gt_instances.bboxes.tensor
    assert (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()  # the partly-outside box is clipped


def test_instances_without_usable_masks_keep_their_boxes_in_training(tmp_path, logged):
    _jpeg(tmp_path / 'x.jpg', shape=(40, 40, 3))
    anns = [
        dict(id=1, image_id=1, category_id=1, bbox=[2, 2, 8, 8], area=64, iscrowd=0,
             segmentation=[[2, 2, 10, 2, 10, 10]]),  # a triangle
        dict(id=2, image_id=1, category_id=2, bbox=[12, 12, 18, 8], area=144, iscrowd=0,
             segmentation=[[12, 12, 30, 12]]),  # 2 points: mmdet's LoadAnnotations would ignore the object
        dict(id=3, image_id=1, category_id=2, bbox=[20, 25, 15, 14], area=210, iscrowd=0),  # no mask at all
    ]
    ann_file = _coco(tmp_path, [dict(id=1, file_name='x.jpg', height=40, width=40)], anns)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]
    out = _dataset(tmp_path, ann_file, pipeline)[0]
    assert out['gt_ignore_flags'].tolist() == [False, False, False]
    masks = out['gt_masks'].masks
    assert masks[0].sum() < 64 and masks[1][12:20, 12:30].all() and masks[2][25:39, 20:35].all()  # boxes stand in
    assert len(logged) == 1 and '2 of 3 objects have no usable instance mask' in logged[0]
    # A test set keeps mmdet's annotations as they are (its pipeline loads no masks).
    logged.clear()
    assert 'mask' not in _dataset(tmp_path, ann_file, pipeline[:1], test_mode=True).get_data_info(0)['instances'][2]
    assert not logged


def test_an_image_without_objects_trains():
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    model = MODELS.build(shrink_model_cfg(cfg.model))
    model.init_weights()
    model.train()
    samples = [make_sample(boxes=np.zeros((0, 4)), labels=()), make_sample()]
    losses = model.loss(torch.randn(2, 3, 128, 160), samples)
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)


def test_a_very_large_image(tmp_path):
    from mmdet.apis import inference_detector, init_detector
    path = tmp_path / 'large.jpg'
    cv2.imwrite(str(path), np.random.RandomState(1).randint(0, 255, (3000, 4500, 3), np.uint8))
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    model = init_detector(cfg, device='cpu')
    result = inference_detector(model, str(path))
    assert result.metainfo['img_shape'] == (171, 256) and result.metainfo['ori_shape'] == (3000, 4500)
    boxes = result.pred_instances.bboxes
    assert (boxes[:, 2] <= 4500).all() and (boxes[:, 3] <= 3000).all()


# -- configs -------------------------------------------------------------------------------------------
def test_class_count_that_does_not_match_the_dataset(tmp_path, tiny_shapes):
    cfg = tiny_train_cfg(tiny_shapes, tmp_path, iters=2)
    cfg.model.roi_head.bbox_head.num_classes = 80
    cfg.experiment_name = 'classes'
    with pytest.raises(ValueError, match=r'num_classes=80, but the train dataset CheckedCocoDataset has 6 classes.*'
                                         r'Set model\.roi_head\.bbox_head\.num_classes=6'):
        Runner.from_cfg(cfg).train()


# -- checkpoints ---------------------------------------------------------------------------------------
def test_checkpoint_of_another_model_is_reported(tmp_path):
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    model = MODELS.build(cfg.model)
    other = dict(cfg.model.roi_head.bbox_head, num_classes=3)
    other_model = MODELS.build(dict(cfg.model, roi_head=dict(cfg.model.roi_head, bbox_head=other)))
    state = other_model.state_dict()
    state['extra.weight'] = torch.zeros(1)
    state.pop('rpn_head.rpn_conv.bias')
    torch.save(dict(state_dict=state), tmp_path / 'other.pth')
    with pytest.raises(ValueError) as info:
        assert_checkpoint_fits(model, str(tmp_path / 'other.pth'), 'shapes.py')
    message = str(info.value)
    assert 'does not fit the model of shapes.py' in message
    assert 'shape mismatches' in message and 'roi_head.bbox_head.local_cls_conv.weight' in message
    assert 'missing from the checkpoint: rpn_head.rpn_conv.bias' in message
    assert 'not in the model: extra.weight' in message and 'Use the config the checkpoint was trained with' in message
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'own.pth')
    assert_checkpoint_fits(model, str(tmp_path / 'own.pth'))


def test_checkpoints_with_arbitrary_objects_are_refused(tmp_path):
    from mmengine.runner import load_checkpoint
    code = PickledCode(tmp_path / 'pwned_marker')
    torch.save(dict(state_dict={'w': torch.zeros(1)}, meta=code), tmp_path / 'evil.pth')
    # mmengine's own loading (load_from, resume, init_detector) refuses it too, through the project's loader.
    with pytest.raises(pickle.UnpicklingError, match=r'evil\.pth holds pickled objects that safe loading refuses '
                                                     r'\(.*GLOBAL posix\.system'):
        load_checkpoint(torch.nn.Linear(1, 1), str(tmp_path / 'evil.pth'))
    assert not (tmp_path / 'pwned_marker').exists() and not os.path.exists('pwned_marker')

    # getattr is allowed only for HistoryBuffer's statistics methods, not to reach e.g. ndarray.tofile.
    class _Sneaky:
        def __reduce__(self):
            return (getattr, (np.ndarray, 'tofile'))
    torch.save({'x': _Sneaky()}, tmp_path / 'sneaky.pth')
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(tmp_path / 'sneaky.pth')


def test_unreadable_checkpoints_are_named_with_what_is_wrong(tmp_path):
    """torch answers a cut or foreign file with a zip-reader error or advice to load unsafely; ours says what it is."""
    from projects.acouplenet.safe_loading import load_checkpoint_file
    from .conftest import load_tool
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.arange(1000.)}}, good)
    torch.testing.assert_close(load_checkpoint_file(str(good))['state_dict']['w'], torch.arange(1000.))
    (tmp_path / 'cut.pth').write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'text.pth').write_text('not a checkpoint\n')
    for name, reason in (('cut', 'empty, truncated or corrupt: PytorchStreamReader failed reading zip archive'),
                         ('empty', 'empty, truncated or corrupt'), ('text', 'corrupt or another format')):
        with pytest.raises(ValueError, match=f'{name}\\.pth is not a readable PyTorch checkpoint \\({reason}'):
            load_checkpoint_file(str(tmp_path / f'{name}.pth'))
    code = PickledCode(tmp_path / 'pwned_marker')
    torch.save(dict(state_dict={'w': torch.zeros(1)}, meta=code), tmp_path / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match=r'evil\.pth holds pickled objects that safe loading refuses '
                                                     r'\(.*GLOBAL posix\.system.*\): only tensors') as info:
        load_checkpoint_file(str(tmp_path / 'evil.pth'))
    assert 'weights_only` set to `False`' not in str(info.value)  # no advice to turn the safety off
    assert isinstance(info.value, ValueError)  # what the tools report in one line
    assert not (tmp_path / 'pwned_marker').exists() and not os.path.exists('pwned_marker')
    # So does mmengine wherever it loads a local checkpoint (its loader would pass torch's errors on).
    from mmengine.runner import load_checkpoint
    with pytest.raises(ValueError, match=r'cut\.pth is not a readable PyTorch checkpoint \(empty, truncated'):
        load_checkpoint(torch.nn.Linear(1, 1), str(tmp_path / 'cut.pth'))
    with pytest.raises(FileNotFoundError, match=r'checkpoint \S*missing\.pth not found'):
        load_checkpoint(torch.nn.Linear(1, 1), str(tmp_path / 'missing.pth'))
    # The tools say it in one line and write nothing.
    for name in ('cut', 'evil'):
        with pytest.raises(SystemExit, match=f'error: .*{name}\\.pth (is not a readable|holds pickled objects)'):
            load_tool('model_zoo').main(['publish', str(tmp_path / f'{name}.pth'), str(tmp_path / 'published')])
    assert not (tmp_path / 'published').exists() or not any((tmp_path / 'published').iterdir())


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    target = tmp_path / 'iter_4.pth'
    backend = AtomicLocalBackend()
    buffer = io.BytesIO()
    torch.save({'state_dict': {'w': torch.ones(3)}}, buffer)
    backend.put(buffer.getvalue(), target)
    backend.put_text(str(target), tmp_path / 'last_checkpoint')

    class Killed(BaseException):
        pass

    real_fdopen = os.fdopen

    def dying_fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        real_write = f.write

        def write(data):
            real_write(data[:len(data) // 2])
            raise Killed()
        f.write = write
        return f

    monkeypatch.setattr(os, 'fdopen', dying_fdopen)
    with pytest.raises(Killed):
        backend.put(b'x' * 1000, target)
    with pytest.raises(Killed):
        atomic_write('iter_6.pth', tmp_path / 'last_checkpoint')
    monkeypatch.setattr(os, 'fdopen', real_fdopen)
    assert torch.equal(torch.load(target)['state_dict']['w'], torch.ones(3))
    assert (tmp_path / 'last_checkpoint').read_text() == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_4.pth', 'last_checkpoint']


def test_mmengine_writes_checkpoints_through_the_atomic_backend(tmp_path):
    from mmengine.fileio import get_file_backend
    assert isinstance(get_file_backend(str(tmp_path / 'x.pth')), AtomicLocalBackend)


@pytest.mark.parametrize('tool, argv, option', [
    ('train', [str(SHAPES_CONFIG), '--work-dir', '{blocker}'], 'work_dir'),
    ('test', [str(SHAPES_CONFIG), '{checkpoint}', '--work-dir', '{blocker}/sub'], 'work_dir'),
    ('main_job', ['--work-dir', '{blocker}', '--data-root', '{tmp}/data'], '--work-dir'),
    ('main_job', ['--data-root', '{blocker}/shapes', '--work-dir', '{tmp}/work'], 'dataset folder'),
    ('generate_shapes', ['{blocker}/shapes', '--num-train', '1', '--num-val', '1'], 'dataset folder'),
    ('benchmark_speed', ['--models', 'rfcn', '--rounds', '0', '--paired', '1', '--out', '{blocker}'], '--out'),
    ('benchmark_shapes', ['--work-dir', '{blocker}', '--data-root', '{tmp}/data'], '--work-dir'),
    ('demo', ['{tmp}/x.jpg', '--config', str(SHAPES_CONFIG), '--checkpoint', '{checkpoint}', '--out',
              '{blocker}/fig.png'], "--out's folder"),
    ('attention_stats', [str(SHAPES_CONFIG), '{checkpoint}', '--out', '{blocker}/stats.json'], "--out's folder"),
])
def test_an_output_folder_that_is_a_file_stops_the_tool_naming_it(tool, argv, option, tmp_path):
    """A file where a tool's output folder should be: an error line naming the option and the fix, before
    any data is generated or model built, and the file untouched."""
    from .conftest import load_tool
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('not a folder')
    (tmp_path / 'model.pth').write_bytes(b'')
    argv = [a.format(blocker=blocker, checkpoint=tmp_path / 'model.pth', tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit, match=f'error: {option} .*notes.txt.*: a file of that name .* in the way; '
                                         f'name a folder'):
        load_tool(tool).main(argv)
    assert blocker.read_text() == 'not a folder'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.pth', 'notes.txt']


# -- property-based ------------------------------------------------------------------------------------
coords = st.floats(min_value=-40, max_value=200, allow_nan=False, allow_infinity=False)


@st.composite
def rois(draw, max_rois=6):
    n = draw(st.integers(min_value=0, max_value=max_rois))
    rows = []
    for _ in range(n):
        x1, y1 = draw(coords), draw(coords)
        # degenerate (zero-size) and reversed boxes included
        x2 = draw(st.one_of(st.just(x1), coords))
        y2 = draw(st.one_of(st.just(y1), coords))
        rows.append([float(draw(st.integers(0, 1))), x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes=rois(), mode=st.sampled_from(['PSRoIPool', 'PSRoIAlign']), k=st.integers(1, 4),
       stride=st.sampled_from([4, 8, 16]))
def test_ps_roi_pooling_properties(boxes, mode, k, stride):
    feat = torch.rand(2, k * k * 3, 9, 11) * 4 - 1  # values in [-1, 3)
    out = PSRoIExtractor(roi_layer=dict(type=mode, output_size=k), featmap_strides=[stride])((feat, ), boxes)
    assert out.shape == (len(boxes), 3, k, k)
    assert torch.isfinite(out).all()
    # averages of cells or of bilinear samples (zero outside the map) stay within the input's range
    assert (out >= min(feat.min().item(), 0) - 1e-5).all() and (out <= max(feat.max().item(), 0) + 1e-5).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes=rois(max_rois=8), k=st.integers(1, 7), stride=st.sampled_from([1, 4, 16]),
       height=st.integers(1, 40), width=st.integers(1, 40))
def test_range_max_roi_pool_equals_torchvision(boxes, k, stride, height, width):
    """The CPU range-maximum RoI pooling is torchvision's RoIPool, bin for bin, on any RoIs; with the RoIs
    as two sets (proposals and contexts), the two sets' outputs side by side along the channels."""
    feat = torch.randn(2, 3, height, width)
    layer = RangeMaxRoIPool(k, 1.0 / stride)
    expected = roi_pool(feat, boxes, k, 1.0 / stride)
    assert torch.equal(layer(feat, boxes), expected)
    half = len(boxes) // 2
    pair = layer(feat, boxes[:2 * half], groups=2)
    assert torch.equal(pair, torch.cat([expected[:half], expected[half:2 * half]], dim=1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(boxes=rois(max_rois=8), k=st.integers(1, 7), stride=st.sampled_from([1, 4, 16]),
       height=st.integers(1, 40), width=st.integers(1, 40), sampling_ratio=st.integers(0, 3),
       aligned=st.booleans())
def test_gather_roi_align_equals_torchvision(boxes, k, stride, height, width, sampling_ratio, aligned):
    """The CPU gather RoIAlign is torchvision's RoIAlign, bin for bin, on any RoIs: finite, in range; with
    the RoIs as two sets, the two sets' outputs side by side along the channels, bit for bit."""
    feat = torch.randn(2, 3, height, width, dtype=torch.float64)
    boxes = boxes.double()
    layer = GatherRoIAlign(k, 1.0 / stride, sampling_ratio, aligned)
    out = layer(feat, boxes)
    assert out.shape == (len(boxes), 3, k, k) and torch.isfinite(out).all()
    half = len(boxes) // 2
    assert torch.equal(layer(feat, boxes[:2 * half], groups=2), torch.cat([out[:half], out[half:2 * half]], dim=1))
    if aligned and sampling_ratio == 0:
        # torchvision's CPU kernel fails on reversed RoIs here (a negative sample count); they take no samples
        reversed_ = (boxes[:, 3] < boxes[:, 1]) | (boxes[:, 4] < boxes[:, 2])
        assert (out[reversed_] == 0).all()
        boxes, out = boxes[~reversed_], out[~reversed_]
    torch.testing.assert_close(out, roi_align(feat, boxes, k, 1.0 / stride, sampling_ratio, aligned),
                               rtol=0, atol=1e-12)
    # averages of bilinear samples (zero off the map) stay within the input's range
    assert (out >= min(feat.min().item(), 0) - 1e-9).all() and (out <= max(feat.max().item(), 0) + 1e-9).all()


@settings(max_examples=100, deadline=None)
@given(boxes=rois(max_rois=8), scale=st.floats(min_value=1.0, max_value=4.0),
       height=st.integers(1, 300), width=st.integers(1, 300))
def test_context_box_properties(boxes, scale, height, width):
    sizes = torch.tensor([[height, width], [max(height // 2, 1), width]], dtype=torch.float32)
    ctx = context_rois(boxes, sizes, scale)
    assert ctx.shape == boxes.shape and torch.isfinite(ctx).all()
    if len(boxes) == 0:
        return
    assert torch.equal(ctx[:, 0], boxes[:, 0])
    limits = sizes[boxes[:, 0].long()]
    assert (ctx[:, 1:] >= 0).all()
    assert (ctx[:, [1, 3]] <= limits[:, 1:2]).all() and (ctx[:, [2, 4]] <= limits[:, 0:1]).all()
    assert (ctx[:, 3] >= ctx[:, 1]).all() and (ctx[:, 4] >= ctx[:, 2]).all()
    # the context holds the part of the (ordered) box that lies in the image
    lo = torch.minimum(boxes[:, 1:3], boxes[:, 3:5])
    hi = torch.maximum(boxes[:, 1:3], boxes[:, 3:5])
    wh = limits.flip(1)
    clipped_lo = torch.minimum(lo.clamp(min=0), wh)
    clipped_hi = torch.minimum(hi.clamp(min=0), wh)
    assert (ctx[:, 1:3] <= clipped_lo + 1e-4).all() and (ctx[:, 3:5] >= clipped_hi - 1e-4).all()
