"""Convert SBD's instance annotations into the mask file VOCSBDDataset reads ("07+12+S").

    python tools/dataset_converters/sbd_to_masks.py SBD_ROOT OUT_JSON [--ids LIST]

SBD_ROOT is the `benchmark_RELEASE/dataset` folder of the Semantic Boundaries Dataset (Hariharan et al.,
2011): `inst/<image id>.mat` holds `GTinst` with `Segmentation` (H x W, instance index per pixel, 0 for
background) and `Categories` (the VOC class, 1-20, of each instance). The output JSON maps each image id
to its instances' class, box and RLE mask; VOCSBDDataset matches them to the VOC XML objects. It is
written to a temporary file and renamed, so a half-written file is never read.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Optional

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from projects.acouplenet.datasets import SBD_FORMAT, rle_from_bitmap  # noqa: E402
from projects.acouplenet.fileio import atomic_write  # noqa: E402

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')


def read_sbd_instances(mat_path: str, skipped: Optional[list] = None) -> dict:
    """One ``inst/*.mat`` file -> ``{'height', 'width', 'instances': [{category, bbox, segmentation}]}``.

    An instance without pixels or with a category outside VOC's 1-20 is left out and described in
    ``skipped`` (when given).
    """
    from scipy.io import loadmat
    try:
        gt = loadmat(mat_path, squeeze_me=True, struct_as_record=False)['GTinst']
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise ValueError(f'{mat_path} is not an SBD instance file (expected a GTinst struct): {exc}') from exc
    seg = np.asarray(gt.Segmentation)
    categories = np.atleast_1d(np.asarray(gt.Categories)).astype(int)
    instances = []
    for index, category in enumerate(categories, start=1):
        mask = seg == index
        problem = ('has no pixels' if not mask.any() else
                   f'has category {category}, not one of VOC\'s 1-{len(VOC_CLASSES)}'
                   if not 1 <= category <= len(VOC_CLASSES) else None)
        if problem:
            if skipped is not None:
                skipped.append(f'{mat_path}: instance {index} {problem}')
            continue
        ys, xs = np.nonzero(mask)
        instances.append(dict(category=VOC_CLASSES[category - 1],
                              bbox=[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
                              segmentation=rle_from_bitmap(mask)))
    return dict(height=int(seg.shape[0]), width=int(seg.shape[1]), instances=instances)


def convert(sbd_root: str, out_json: str, ids=None, skipped: Optional[list] = None) -> dict:
    """Every (or each listed) image's instances -> ``out_json``; returns the images' entries.

    ``skipped`` (when given) receives a line per instance left out (see :func:`read_sbd_instances`).
    """
    inst_dir = osp.join(sbd_root, 'inst')
    if not osp.isdir(inst_dir):
        raise FileNotFoundError(f'{inst_dir} not found; pass the benchmark_RELEASE/dataset folder of SBD')
    if ids is None:
        ids = sorted(f[:-4] for f in os.listdir(inst_dir) if f.endswith('.mat'))
    images = {}
    for image_id in ids:
        images[image_id] = read_sbd_instances(osp.join(inst_dir, f'{image_id}.mat'), skipped)
    atomic_write(json.dumps(dict(format=SBD_FORMAT, classes=list(VOC_CLASSES), images=images)), out_json)
    return images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sbd_root')
    parser.add_argument('out_json')
    parser.add_argument('--ids', help='text file of image ids to convert (default: every inst/*.mat)')
    args = parser.parse_args(argv)
    ids = None
    if args.ids:
        with open(args.ids) as f:
            ids = [line.strip() for line in f if line.strip()]
    skipped = []
    try:
        images = convert(args.sbd_root, args.out_json, ids, skipped)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    for line in skipped:
        print(f'skipped: {line}', file=sys.stderr)
    print(f'{args.out_json}: {sum(len(v["instances"]) for v in images.values())} instances in {len(images)} images'
          + (f' ({len(skipped)} instance(s) skipped, listed above; their objects use their box as the attention '
             f'target)' if skipped else ''))


if __name__ == '__main__':
    main()
