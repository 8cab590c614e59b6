"""Annotation loading for attention supervision."""
import logging

import numpy as np
from mmengine.logging import print_log

from mmdet.datasets.transforms import LoadAnnotations
from mmdet.registry import TRANSFORMS


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


def rle_to_bitmap(rle: dict) -> np.ndarray:
    """COCO RLE (``str`` or ``bytes`` counts) -> (H, W) uint8 mask."""
    from pycocotools import mask as mask_utils
    rle = dict(rle)
    if isinstance(rle['counts'], str):
        rle['counts'] = rle['counts'].encode('ascii')
    return mask_utils.decode(rle)
