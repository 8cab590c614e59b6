"""Shared helpers: small detectors built from the real configs, and synthetic batches."""
import os
import shlex
import shutil
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

from mmdet.utils import register_all_modules  # noqa: E402

register_all_modules()
import projects.acouplenet  # noqa: E402,F401  (registers the modules)

CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)


def shrink_model_cfg(model_cfg, num_classes=None):
    """Shrink a detector config for CPU tests: ResNet-18, few channels, few RoIs.

    Only sizes change; every switch of the config (attention stages, branches,
    normalisation, coupling, context, sampler, pooling type) stays as written.
    """
    m = model_cfg
    backbone = m.backbone.backbone if m.backbone.type == 'AttentionBackbone' else m.backbone
    backbone.depth = 18
    backbone.init_cfg = None
    # Without pretrained weights, zero-initialised last-BN scales stay zero under the configs' frozen BN,
    # which would cut every residual branch off from the gradient.
    backbone.zero_init_residual = False
    backbone.pop('pretrained', None)
    if m.backbone.type == 'AttentionBackbone':
        m.backbone.attention_channels = 8
    # ResNet-18 (BasicBlock): conv4 has 4x the stem width in channels, conv5 8x.
    base = backbone.get('base_channels', 64)
    m.rpn_head.in_channels = 4 * base
    m.rpn_head.feat_channels = 16
    roi = m.roi_head
    if roi.type == 'CoupledRoIHead':
        roi.bbox_head.in_channels = 8 * base
        roi.bbox_head.mid_channels = 16
        roi.bbox_head.global_channels = 16
        roi.bbox_roi_extractor.out_channels = 16
    else:  # mmdet's C4 Faster R-CNN: conv5 is the per-RoI shared head
        roi.shared_head.depth = 18
        roi.shared_head.init_cfg = None
        roi.bbox_roi_extractor.out_channels = 4 * base
        roi.bbox_head.in_channels = 8 * base
    if num_classes is not None:
        roi.bbox_head.num_classes = num_classes
    m.train_cfg.rpn_proposal.nms_pre = 200
    m.train_cfg.rpn_proposal.max_per_img = 64
    m.train_cfg.rcnn.sampler.num = 32
    m.test_cfg.rpn.nms_pre = 200
    m.test_cfg.rpn.max_per_img = 50
    return m


def make_sample(img_shape=(120, 150), pad_shape=(128, 160), boxes=((10, 10, 60, 70), (50, 40, 140, 110)),
                labels=(0, 2), masks='bitmap'):
    """A DetDataSample with boxes and rectangle-shaped instance masks."""
    from mmengine.structures import InstanceData

    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks, PolygonMasks

    h, w = pad_shape
    sample = DetDataSample()
    sample.set_metainfo(dict(img_shape=tuple(img_shape), ori_shape=tuple(img_shape), pad_shape=tuple(pad_shape),
                             batch_input_shape=tuple(pad_shape), scale_factor=(1.0, 1.0), img_id=0))
    gt = InstanceData()
    gt.bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    gt.labels = torch.tensor(labels, dtype=torch.long)
    if masks == 'bitmap':
        bitmap = np.zeros((len(boxes), h, w), dtype=np.uint8)
        for i, (x1, y1, x2, y2) in enumerate(boxes):
            bitmap[i, int(y1):int(y2), int(x1):int(x2)] = 1
        gt.masks = BitmapMasks(bitmap, h, w)
    elif masks == 'polygon':
        gt.masks = PolygonMasks([[np.array([x1, y1, x2, y1, x2, y2, x1, y2], dtype=np.float64)]
                                 for x1, y1, x2, y2 in boxes], h, w)
    sample.gt_instances = gt
    return sample


def write_voc_image(root, year, image_id, objects, size=(120, 160)):
    """Write a JPEG and its VOC XML; objects are (class, x1, y1, x2, y2) in VOC's 1-based pixels."""
    h, w = size
    (root / year / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    (root / year / 'Annotations').mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / year / 'JPEGImages' / f'{image_id}.jpg'),
                np.random.RandomState(len(image_id)).randint(0, 255, (h, w, 3), np.uint8))
    ann = ET.Element('annotation')
    ET.SubElement(ann, 'filename').text = f'{image_id}.jpg'
    size_el = ET.SubElement(ann, 'size')
    for tag, value in (('width', w), ('height', h), ('depth', 3)):
        ET.SubElement(size_el, tag).text = str(value)
    for name, x1, y1, x2, y2 in objects:
        obj = ET.SubElement(ann, 'object')
        ET.SubElement(obj, 'name').text = name
        ET.SubElement(obj, 'difficult').text = '0'
        box = ET.SubElement(obj, 'bndbox')
        for tag, value in (('xmin', x1), ('ymin', y1), ('xmax', x2), ('ymax', y2)):
            ET.SubElement(box, tag).text = str(value)
    ET.ElementTree(ann).write(root / year / 'Annotations' / f'{image_id}.xml')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


SHAPES_CONFIG = REPO / 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'


@pytest.fixture(scope='session')
def mim():
    """Path of the ``mim`` command of the test environment (beside its Python)."""
    path = shutil.which('mim', path=os.path.dirname(sys.executable))
    assert path, 'mim is not installed in the test environment'
    return path


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory):
    """A generated shapes dataset of 8 train and 4 val images."""
    from projects.acouplenet.shapes import ShapesConfig, generate
    root = tmp_path_factory.mktemp('data') / 'shapes'
    generate(str(root), ShapesConfig(num_train=8, num_val=4, max_objects=3, seed=1))
    return root


@pytest.fixture(scope='session')
def shapes_checkpoint(tmp_path_factory):
    """A checkpoint of the shapes ACoupleNet (random weights) in mmengine's format."""
    from mmengine.config import Config

    from mmdet.registry import MODELS
    from projects.acouplenet.shapes import CLASSES
    cfg = Config.fromfile(str(SHAPES_CONFIG))
    model = MODELS.build(cfg.model)
    model.init_weights()
    path = tmp_path_factory.mktemp('ckpt') / 'acouplenet_shapes.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=CLASSES))), path)
    return path


@pytest.fixture(scope='session')
def shapes_images(tiny_shapes):
    """Two validation images of ``tiny_shapes``."""
    return sorted(str(p) for p in (tiny_shapes / 'val').glob('*.jpg'))[:2]


def load_tool(name):
    """``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PickledCode:
    """Unpickling it runs ``touch MARKER``: the code a checkpoint or a pickle may carry, which the tests show
    never runs."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {shlex.quote(self.marker)}',))


def shapes_test_options(data_root):
    """``--cfg-options`` that test a shapes config on the val split of the generated set at ``data_root``,
    without data workers."""
    return [f'test_dataloader.dataset.data_root={data_root}/', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False',
            f'test_evaluator.ann_file={data_root}/annotations/instances_val.json']


def tiny_train_cfg(data_root, work_dir, iters, config=SHAPES_CONFIG, batch_size=2, random_flip=True):
    """A real config shortened to ``iters`` on a tiny dataset, single process, no data workers."""
    from mmengine.config import Config

    from projects.acouplenet.runtime import prepare_cfg, set_coco_data_root, set_iterations
    cfg = Config.fromfile(str(config))
    set_coco_data_root(cfg, str(data_root))
    set_iterations(cfg, iters)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader) is not None:  # the COCO paper configs have no val_dataloader
            cfg[loader].num_workers = 0
            cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = batch_size
    if not random_flip:
        cfg.train_dataloader.dataset.pipeline = [t for t in cfg.train_dataloader.dataset.pipeline
                                                 if t['type'] != 'RandomFlip']
    cfg.default_hooks.logger.interval = 1
    cfg.log_processor.window_size = 1
    cfg.work_dir = str(work_dir)
    return prepare_cfg(cfg)
