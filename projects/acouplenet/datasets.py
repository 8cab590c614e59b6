"""Datasets: COCO that reports what it drops, and PASCAL VOC with SBD instance masks ("07+12+S").

Both take care of what mmdet's own loading transforms do not, so that the
configs' pipelines are mmdet's plain ``LoadImageFromFile`` and
``LoadAnnotations`` (which mmdet's ``analyze_results`` tool requires): a bad
image is skipped with a log line in training and named in an error in
testing, and an object without a usable instance mask gets its box as its mask.
"""
import json
import logging
import os
import os.path as osp
from collections import Counter
from typing import Any, Dict, List, Optional, Union

import mmcv
import numpy as np
from mmengine import fileio
from mmengine.fileio import get_local_path
from mmengine.logging import print_log

from mmdet.datasets import CocoDataset, VOCDataset
from mmdet.datasets.api_wrappers import COCO
from mmdet.registry import DATASETS

SBD_FORMAT = 'acouplenet-sbd-instances-v1'


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (n, 4) and (m, 4) ``x1, y1, x2, y2`` boxes, (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def truncation_problem(path: str) -> Optional[str]:
    """Why a local JPEG/PNG file is cut short, or None. (OpenCV decodes a truncated JPEG without error.)"""
    try:
        with open(path, 'rb') as f:
            head = f.read(8)
            f.seek(max(os.path.getsize(path) - 64, 0))
            tail = f.read()
    except OSError:
        return None  # not a local file: left to the decoder
    if head[:2] == b'\xff\xd8' and b'\xff\xd9' not in tail:
        return 'is a truncated JPEG (no end-of-image marker)'
    if head == b'\x89PNG\r\n\x1a\n' and b'IEND' not in tail:
        return 'is a truncated PNG (no IEND chunk)'
    return None


def read_problem(path: str, backend_args: Optional[dict] = None) -> Optional[str]:
    """Why an image file cannot be read or decoded, or None if it decodes (a cut one may: truncation_problem)."""
    try:
        if not fileio.exists(path, backend_args=backend_args):
            return 'does not exist'
        img = mmcv.imfrombytes(fileio.get(path, backend_args=backend_args))
    except Exception as exc:  # noqa: BLE001  (any reader or decoder error makes the image unusable)
        return f'cannot be read ({type(exc).__name__}: {exc})'
    return None if img is not None else 'cannot be decoded (corrupt, or not an image)'


def box_polygon(bbox) -> list:
    """A box ``(x1, y1, x2, y2)`` as a one-part COCO polygon."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def usable_mask(mask) -> bool:
    """Whether ``mask`` is a COCO RLE or a polygon list with at least one part of >= 3 points."""
    if isinstance(mask, dict):
        return 'counts' in mask and 'size' in mask
    if isinstance(mask, (list, tuple)):
        return any(len(part) >= 6 and len(part) % 2 == 0 for part in mask)
    return False


def rle_from_bitmap(mask: np.ndarray) -> dict:
    """(H, W) binary mask -> COCO RLE with a ``str`` counts field (JSON-serialisable)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle


class CheckedDatasetMixin:
    """Bad images and objects without masks, for mmdet's detection datasets.

    Combined with a dataset class (``class CheckedCocoDataset(CheckedDatasetMixin,
    CocoDataset)``), in place of custom loading transforms:

    * An image that is missing, truncated (which OpenCV decodes without error,
      half grey) or undecodable: in training (``skip_bad_images=True``) the
      dataset logs a warning naming the file and draws another image (mmengine
      retries items whose pipeline returns None); in testing, or with
      ``skip_bad_images=False``, a ``ValueError`` names the file and the fix.
      A pipeline error on an image that decodes is re-raised as it is. A
      missing annotation file or image folder (a wrong ``data_root`` or
      ``data_prefix``) raises a ``FileNotFoundError`` in either mode.
    * In training, an object whose instance mask is missing or unusable
      (polygons with fewer than 3 points, which mmdet's ``LoadAnnotations``
      would turn into an ignored object) gets its box as its mask: the
      attention target the paper uses for VOC objects without SBD masks. One
      log line per dataset counts them.

    Args:
        skip_bad_images (bool): Skip bad images in training (True) or stop.
        **kwargs: Arguments of the dataset class.
    """

    def __init__(self, *args, skip_bad_images: bool = True, **kwargs) -> None:
        self.skip_bad_images = skip_bad_images
        super().__init__(*args, **kwargs)

    def load_data_list(self) -> List[dict]:
        self.check_ann_file()
        data_list = super().load_data_list()
        if self.test_mode:
            return data_list
        instances = [instance for info in data_list for instance in info['instances']]
        replaced = 0
        for instance in instances:
            if not usable_mask(instance.get('mask')):
                instance['mask'] = box_polygon(instance['bbox'])
                replaced += 1
        if replaced:
            print_log(f'{type(self).__name__} ({self.ann_file}): {replaced} of {len(instances)} objects have no '
                      f'usable instance mask (none, or polygons with fewer than 3 points); their boxes stand in as '
                      f'their masks (attention targets)', logger='current', level=logging.WARNING)
        return data_list

    def check_ann_file(self) -> None:
        """Raise a ``FileNotFoundError`` that says what to do when ``ann_file`` is missing: what a newcomer
        meets first, where mmdet's loaders name the file but not the fix."""
        if self.ann_file and not fileio.exists(self.ann_file, backend_args=self.backend_args):
            raise FileNotFoundError(
                f'{type(self).__name__}: ann_file {self.ann_file} not found (data_root {self.data_root!r}); put the '
                f'dataset there or set the config\'s data_root, e.g. --cfg-options '
                f'train_dataloader.dataset.data_root=DIR. COCO, VOC and SBD: the README\'s "Data" paragraph; '
                f'the generated shapes dataset: python tools/generate_shapes.py DIR')

    def check_image_folder(self, path: str) -> None:
        """Raise a ``FileNotFoundError`` when a local image's folder does not exist: a wrong ``data_prefix``
        or ``data_root``, which would otherwise be skipped image by image until mmengine gives up."""
        folder = osp.dirname(path)
        if isinstance(fileio.get_file_backend(path, backend_args=self.backend_args), fileio.LocalBackend) \
                and not osp.isdir(folder):
            raise FileNotFoundError(f'{type(self).__name__}: image folder {folder} does not exist (for {path}); set '
                                    f'the config\'s data_root and data_prefix so that they lead to the images')

    def prepare_data(self, idx: int) -> Any:
        data_info = self.get_data_info(idx)
        path = data_info.get('img_path')
        if not isinstance(path, str):
            return self.pipeline(data_info)
        problem = truncation_problem(path)  # checked first: the decoder would not notice
        if problem is None:
            try:
                return self.pipeline(data_info)
            except Exception:
                problem = read_problem(path, self.backend_args)
                if problem is None:
                    raise  # the image is fine: the error is another transform's
        self.check_image_folder(path)  # a whole folder missing is a wrong data_prefix, not one bad image
        if self.test_mode or not self.skip_bad_images:
            raise ValueError(f'image {path} {problem}: replace the file or remove it from the annotation file')
        print_log(f'{type(self).__name__}: skipping {path}: the file {problem}; the dataset draws another image. '
                  f'Replace the file or remove it from the annotations.', logger='current', level=logging.WARNING)
        return None


def coco_drop_reason(ann: dict, img_info: dict, cat_ids) -> Optional[str]:
    """Why mmdet's ``CocoDataset.parse_data_info`` drops an annotation, or None if it keeps it."""
    if ann.get('ignore', False):
        return 'marked ignore'
    x1, y1, w, h = ann['bbox']
    # (mmdet tests "outside" first; a zero-width box fails both, and is reported as what it is)
    if ann['area'] <= 0 or w < 1 or h < 1:
        return 'zero-size box (width or height < 1, or area <= 0)'
    if (max(0, min(x1 + w, img_info['width']) - max(x1, 0)) * max(0, min(y1 + h, img_info['height']) - max(y1, 0))
            == 0):
        return 'box outside its image'
    if ann['category_id'] not in cat_ids:
        return 'category not in the dataset\'s classes'
    return None


def class_order_problem(classes, category_names) -> Optional[str]:
    """Why a config's ``classes`` would be labelled wrongly from a COCO file's categories, or None.

    mmdet's ``CocoDataset`` labels objects by the position of their category
    among the file's categories that ``classes`` names, in the file's order
    (pycocotools' ``getCatIds``), while the detections are named by the
    position in ``classes``: a misspelt class shifts the labels of those
    after it, and another order swaps names, silently in both cases. (Its
    ``CocoMetric`` pairs the two alike, so AP alone would not show it.)
    """
    unknown = [name for name in classes if name not in category_names]
    if unknown:
        it = 'it' if len(unknown) == 1 else 'them'
        return (f'has no category named {", ".join(map(repr, unknown))}: mmdet would skip {it} and give the '
                f'classes after {it} the labels, and so the names, of earlier ones; name the classes as the file does: '
                f'{", ".join(category_names)}')
    labelled = [name for name in category_names if name in classes]
    if labelled != list(classes):
        return (f'lists these categories in another order: mmdet labels objects in the file\'s order, so the '
                f'detections would carry the wrong names; list the classes as {", ".join(labelled)}')
    return None


@DATASETS.register_module()
class CheckedCocoDataset(CheckedDatasetMixin, CocoDataset):
    """mmdet's :class:`CocoDataset` that says which annotations it drops and why.

    mmdet drops annotations with zero-size boxes, boxes outside their image,
    an ``ignore`` mark or an unknown category without a word; this dataset
    drops the same ones and logs a summary (counts per reason, a few examples)
    once it has loaded. Boxes that only partly leave the image are kept and
    clipped by the pipeline's ``Resize``. Bad images and objects without masks:
    :class:`CheckedDatasetMixin`.
    """

    def load_data_list(self) -> List[dict]:
        self._dropped: Counter = Counter()
        self._examples: List[str] = []
        data_list = super().load_data_list()
        if self._dropped:
            reasons = ', '.join(f'{n} {reason}' for reason, n in self._dropped.most_common())
            print_log(f'{type(self).__name__} ({self.ann_file}): dropped {sum(self._dropped.values())} annotation(s): '
                      f'{reasons}; e.g. {"; ".join(self._examples)}', logger='current', level=logging.WARNING)
        return data_list

    def COCOAPI(self, path: str) -> COCO:  # noqa: N802  (mmdet's name: it calls self.COCOAPI(local_path))
        """mmdet's COCO API on the annotation file, whose categories must fit the config's classes
        (:func:`class_order_problem`: a ``ValueError`` otherwise)."""
        coco = COCO(path)
        problem = class_order_problem(self.metainfo['classes'], [c['name'] for c in coco.dataset.get('categories', [])])
        if problem:
            raise ValueError(f'{type(self).__name__}: {self.ann_file} {problem} (metainfo=dict(classes=...) in the '
                             f'config)')
        return coco

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        img_info = raw_data_info['raw_img_info']
        for ann in raw_data_info['raw_ann_info']:
            reason = coco_drop_reason(ann, img_info, self.cat_ids)
            if reason:
                self._dropped[reason] += 1
                if len(self._examples) < 3:
                    self._examples.append(f'annotation {ann.get("id")} of {img_info["file_name"]}: {reason}')
        return super().parse_data_info(raw_data_info)


def load_sbd_instances(path: str, backend_args: Optional[dict] = None) -> Dict[str, dict]:
    """The converter's JSON (``tools/dataset_converters/sbd_to_masks.py``) as ``{image id: entry}``."""
    try:
        with get_local_path(path, backend_args=backend_args) as local_path:
            with open(local_path) as f:
                data = json.load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f'SBD instance file {path} not found; create it from SBD\'s benchmark_RELEASE with '
                                f'`python tools/dataset_converters/sbd_to_masks.py <SBD root> {path}`, or set '
                                f'sbd_ann_file=None to train with box targets only') from exc
    if not isinstance(data, dict) or data.get('format') != SBD_FORMAT:
        raise ValueError(f'{path} is not an SBD instance file of format {SBD_FORMAT!r}; create it with '
                         f'`python tools/dataset_converters/sbd_to_masks.py <SBD root> {path}`')
    return data['images']


@DATASETS.register_module()
class VOCSBDDataset(CheckedDatasetMixin, VOCDataset):
    """VOC detection with instance masks from SBD where SBD has the image.

    Each XML object is matched to the SBD instance of the same class with the
    highest box IoU (at least ``match_iou``, one-to-one); matched objects get
    the SBD mask as a COCO RLE in ``instance['mask']``, the others their box
    (:class:`CheckedDatasetMixin`, which also handles bad images). Objects
    whose name is not among the classes, which mmdet leaves out without a
    word, are counted in a log line (a misspelt class name would otherwise
    train on nothing, unnoticed).

    Args:
        sbd_ann_file (str, optional): The converter's JSON, relative to
            ``data_root``. None: plain VOC (every object uses its box).
        match_iou (float): Minimum IoU between an XML box and the SBD mask's
            box for a match.
        **kwargs: As :class:`VOCDataset` and :class:`CheckedDatasetMixin`.
    """

    def __init__(self, sbd_ann_file: Optional[str] = None, match_iou: float = 0.5, **kwargs) -> None:
        self.sbd_ann_file = sbd_ann_file
        self.match_iou = match_iou
        self._sbd: Dict[str, dict] = {}
        self._sbd_matches = Counter()
        self._unknown_names = Counter()
        super().__init__(**kwargs)

    def _join_prefix(self):
        super()._join_prefix()
        if self.sbd_ann_file and self.data_root and not osp.isabs(self.sbd_ann_file):
            self.sbd_ann_file = osp.join(self.data_root, self.sbd_ann_file)

    def load_data_list(self) -> List[dict]:
        self.check_ann_file()  # before SBD's file: a wrong data_root is the likelier mistake
        self._sbd = load_sbd_instances(self.sbd_ann_file, self.backend_args) if self.sbd_ann_file else {}
        self._sbd_matches = Counter()
        self._unknown_names = Counter()
        data_list = super().load_data_list()
        self._log_unknown_names()
        if self.sbd_ann_file:
            objects = sum(len(info['instances']) for info in data_list)
            print_log(f'VOCSBDDataset ({self.ann_file}): SBD masks for {self._sbd_matches["objects"]} of {objects} '
                      f'objects in {self._sbd_matches["images"]} of {len(data_list)} images',
                      logger='current', level=logging.INFO)
        self._sbd = {}
        return data_list

    def _log_unknown_names(self) -> None:
        """A warning that counts the objects left out because their names are not among the classes."""
        if self._unknown_names:
            names = ', '.join(f'{name} ({n})' for name, n in self._unknown_names.most_common())
            print_log(f'VOCSBDDataset ({self.ann_file}): left out {sum(self._unknown_names.values())} object(s) whose '
                      f'name is not one of the classes: {names}; check metainfo=dict(classes=...) against the '
                      f'XML files\' <name>s if they should count', logger='current', level=logging.WARNING)

    def _parse_instance_info(self, raw_ann_info, minus_one: bool = True) -> List[dict]:
        classes = self._metainfo['classes']
        self._unknown_names.update(name for name in (obj.findtext('name') for obj in raw_ann_info.findall('object'))
                                   if name not in classes)
        return super()._parse_instance_info(raw_ann_info, minus_one)

    def parse_data_info(self, img_info: dict) -> Union[dict, List[dict]]:
        data_info = super().parse_data_info(img_info)
        entry = self._sbd.get(str(img_info['img_id']))
        if entry and data_info['instances']:
            self._attach_masks(data_info, entry)
        return data_info

    def _attach_masks(self, data_info: dict, entry: dict) -> None:
        if (entry['height'], entry['width']) != (data_info['height'], data_info['width']):
            print_log(f'VOCSBDDataset: SBD size {entry["height"]}x{entry["width"]} of {data_info["img_id"]} differs '
                      f'from the XML size {data_info["height"]}x{data_info["width"]}; its SBD masks are skipped',
                      logger='current', level=logging.WARNING)
            return
        classes = self._metainfo['classes']
        candidates = [s for s in entry['instances'] if s['category'] in classes]
        if not candidates:
            return
        instances = data_info['instances']
        iou = box_iou([i['bbox'] for i in instances], [s['bbox'] for s in candidates])
        same_class = np.array([[classes[i['bbox_label']] == s['category'] for s in candidates] for i in instances])
        iou = np.where(same_class, iou, 0.0)
        # Greedy one-to-one matching, best pairs first.
        matched_objects, matched_masks = set(), set()
        for flat in np.argsort(-iou, axis=None, kind='stable'):
            i, j = divmod(int(flat), len(candidates))
            if iou[i, j] < self.match_iou:
                break
            if i in matched_objects or j in matched_masks:
                continue
            instances[i]['mask'] = candidates[j]['segmentation']
            matched_objects.add(i)
            matched_masks.add(j)
        self._sbd_matches['objects'] += len(matched_objects)
        self._sbd_matches['images'] += bool(matched_objects)
