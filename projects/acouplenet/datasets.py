"""Datasets: COCO that reports what it drops, and PASCAL VOC with SBD instance masks ("07+12+S")."""
import json
import logging
import os.path as osp
from collections import Counter
from typing import Dict, List, Optional, Union

import numpy as np
from mmengine.fileio import get_local_path
from mmengine.logging import print_log

from mmdet.datasets import CocoDataset, VOCDataset
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


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """mmdet's :class:`CocoDataset` that says which annotations it drops and why.

    mmdet drops annotations with zero-size boxes, boxes outside their image,
    an ``ignore`` mark or an unknown category without a word; this dataset
    drops the same ones and logs a summary (counts per reason, a few examples)
    once it has loaded. Boxes that only partly leave the image are kept and
    clipped by the pipeline's ``Resize``.
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
class VOCSBDDataset(VOCDataset):
    """VOC detection with instance masks from SBD where SBD has the image.

    Each XML object is matched to the SBD instance of the same class with the
    highest box IoU (at least ``match_iou``, one-to-one); matched objects get
    the SBD mask as a COCO RLE in ``instance['mask']``, the others none, so
    :class:`LoadAttentionAnnotations` uses their boxes as masks.

    Args:
        sbd_ann_file (str, optional): The converter's JSON, relative to
            ``data_root``. None: plain VOC (every object uses its box).
        match_iou (float): Minimum IoU between an XML box and the SBD mask's
            box for a match.
        **kwargs: As :class:`VOCDataset`.
    """

    def __init__(self, sbd_ann_file: Optional[str] = None, match_iou: float = 0.5, **kwargs) -> None:
        self.sbd_ann_file = sbd_ann_file
        self.match_iou = match_iou
        self._sbd: Dict[str, dict] = {}
        super().__init__(**kwargs)

    def _join_prefix(self):
        super()._join_prefix()
        if self.sbd_ann_file and self.data_root and not osp.isabs(self.sbd_ann_file):
            self.sbd_ann_file = osp.join(self.data_root, self.sbd_ann_file)

    def load_data_list(self) -> List[dict]:
        self._sbd = load_sbd_instances(self.sbd_ann_file, self.backend_args) if self.sbd_ann_file else {}
        data_list = super().load_data_list()
        if self.sbd_ann_file:
            instances = [i for info in data_list for i in info['instances']]
            with_mask = sum('mask' in i for i in instances)
            images = sum(any('mask' in i for i in info['instances']) for info in data_list)
            print_log(f'VOCSBDDataset ({self.ann_file}): SBD masks for {with_mask} of {len(instances)} objects '
                      f'in {images} of {len(data_list)} images; the others use their boxes as attention targets',
                      logger='current', level=logging.INFO)
        self._sbd = {}
        return data_list

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
