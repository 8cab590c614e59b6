"""Loading transforms: images that may be broken, and annotations for attention supervision."""
import logging
import os
from typing import Optional

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log

from mmdet.datasets.transforms import LoadAnnotations
from mmdet.registry import TRANSFORMS


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


@TRANSFORMS.register_module()
class SafeLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that catches missing, corrupt and truncated images.

    Grayscale and RGBA files load as 3-channel BGR (``color_type='color'``).

    Args:
        skip_bad (bool): In training, skip a bad image with a warning naming
            it (the dataset then draws another one); otherwise raise an error
            that names the file and the fix.
        **kwargs: As :class:`LoadImageFromFile`.
    """

    def __init__(self, skip_bad: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_bad = skip_bad

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        problem = truncation_problem(filename) if isinstance(filename, str) else None
        if problem is None:
            try:
                return super().transform(results)
            except FileNotFoundError:
                problem = 'does not exist'
            except AssertionError:  # mmcv: the decoder returned None
                problem = 'cannot be decoded (corrupt, or not an image)'
            except Exception as exc:  # noqa: BLE001  (any decoder error is a bad image here)
                problem = f'cannot be read ({type(exc).__name__}: {exc})'
        if self.skip_bad:
            print_log(f'SafeLoadImageFromFile: skipping {filename}: the file {problem}; the dataset draws another '
                      f'image. Replace the file or remove it from the annotations.', logger='current',
                      level=logging.WARNING)
            return None
        raise ValueError(f'image {filename} {problem}: replace the file or remove it from the annotation file')


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


@TRANSFORMS.register_module()
class LoadAttentionAnnotations(LoadAnnotations):
    """``LoadAnnotations`` that keeps every instance when its mask is unusable.

    mmdet's loader raises a ``KeyError`` for an instance without a ``mask``
    and turns an instance whose polygons all have fewer than 3 points into an
    ignored box. For attention supervision the box is the right stand-in for a
    missing mask (the paper's VOC images without SBD masks): such instances get
    their box as a rectangular mask, keep their label, and the first image
    where this happens is logged (once per worker process).

    Args: as :class:`LoadAnnotations`.
    """

    _logged = False

    def _process_masks(self, results: dict) -> list:
        replaced = 0
        for instance in results.get('instances', []):
            if not usable_mask(instance.get('mask')):
                instance['mask'] = box_polygon(instance['bbox'])
                replaced += 1
        if replaced and not LoadAttentionAnnotations._logged:
            print_log(f'LoadAttentionAnnotations: {replaced} instance(s) of {results.get("img_path", "an image")} '
                      f'have no usable mask (missing, or polygons with fewer than 3 points); their boxes are '
                      f'used as masks. Logged once per process.', logger='current', level=logging.WARNING)
            LoadAttentionAnnotations._logged = True
        return super()._process_masks(results)


def rle_from_bitmap(mask: np.ndarray) -> dict:
    """(H, W) binary mask -> COCO RLE with a ``str`` counts field (JSON-serialisable)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode('ascii')
    return rle

