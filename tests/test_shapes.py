"""The generated shapes dataset: deterministic, valid COCO, masks agree with boxes, the requested
difficulty occurs, and it is written atomically."""
import filecmp
import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from projects.acouplenet import shapes
from projects.acouplenet.shapes import CLASSES, ShapesConfig, generate, is_complete, render_image

SMALL = dict(num_train=12, num_val=6, image_size=(128, 160), min_size=10, max_size=90)


def test_deterministic_for_a_seed(tmp_path):
    a = generate(str(tmp_path / 'a'), ShapesConfig(seed=3, **SMALL))
    b = generate(str(tmp_path / 'b'), ShapesConfig(seed=3, **SMALL))
    assert a == b
    for split in ('train', 'val'):
        files = sorted(os.listdir(tmp_path / 'a' / split))
        assert files and files == sorted(os.listdir(tmp_path / 'b' / split))
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a' / split, tmp_path / 'b' / split, files,
                                                   shallow=False)
        assert not mismatch and not errors
        assert filecmp.cmp(tmp_path / 'a' / 'annotations' / f'instances_{split}.json',
                           tmp_path / 'b' / 'annotations' / f'instances_{split}.json', shallow=False)
    generate(str(tmp_path / 'c'), ShapesConfig(seed=4, **SMALL))
    assert not filecmp.cmp(tmp_path / 'a' / 'annotations' / 'instances_train.json',
                           tmp_path / 'c' / 'annotations' / 'instances_train.json', shallow=False)
    # The fingerprint the reports carry: equal for equal data, changed by another seed or one image byte.
    prints = {name: shapes.fingerprint(str(tmp_path / name)) for name in 'abc'}
    assert prints['a'] == prints['b'] != prints['c'] and len(prints['a']) == 64
    image = tmp_path / 'b' / 'val' / sorted(os.listdir(tmp_path / 'b' / 'val'))[0]
    image.write_bytes(image.read_bytes()[:-1] + bytes([image.read_bytes()[-1] ^ 1]))
    assert shapes.fingerprint(str(tmp_path / 'b')) != prints['a']


def test_valid_coco_with_masks_that_agree_with_boxes(tmp_path):
    generate(str(tmp_path / 'd'), ShapesConfig(**SMALL))
    coco = COCO(str(tmp_path / 'd' / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES) and len(CLASSES) >= 6
    assert len(coco.getAnnIds()) > 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann['image_id'])[0]
        assert os.path.isfile(tmp_path / 'd' / 'train' / img['file_name'])
        mask = coco.annToMask(ann)
        assert mask.shape == (img['height'], img['width'])
        ys, xs = np.nonzero(mask)
        x, y, w, h = ann['bbox']
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        assert ann['area'] == mask.sum() == mask_utils.area(ann['segmentation'])
        assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= len(CLASSES)
        assert 0 < ann['visible_fraction'] <= 1


def _stats(num=60, **options):
    cfg = ShapesConfig(image_size=(192, 192), min_size=12, max_size=150, **options)
    per_image = [render_image(cfg, 'train', i)[1] for i in range(num)]
    anns = [a for image in per_image for a in image]
    return dict(occluded=np.mean([a['visible_fraction'] < 0.95 and not a['truncated'] for a in anns]),
                hidden=np.mean([a['visible_fraction'] < 0.95 for a in anns]),
                truncated=np.mean([a['truncated'] for a in anns]), areas=np.array([a['area'] for a in anns]),
                empty=np.mean([len(image) == 0 for image in per_image]))


def test_requested_difficulty_occurs():
    default = _stats(**{k: getattr(ShapesConfig(), k) for k in ('occlusion', 'truncation', 'empty_fraction')})
    assert default['occluded'] > 0.15 and default['truncated'] > 0.15 and default['empty'] > 0
    areas = default['areas']
    assert (areas < 32 ** 2).any() and (areas > 96 ** 2).any()  # COCO small and large objects
    # The options drive what they name.
    heavy, none = _stats(occlusion=0.9, truncation=0.0), _stats(occlusion=0.0, truncation=0.0)
    assert heavy['hidden'] > none['hidden'] + 0.15, (heavy, none)
    cut, uncut = _stats(occlusion=0.0, truncation=0.6), _stats(occlusion=0.0, truncation=0.0)
    assert cut['truncated'] > uncut['truncated'] + 0.3, (cut, uncut)
    # (an image can also end up empty when its only objects are mostly hidden, so not exactly 0)
    assert _stats(empty_fraction=0.0)['empty'] < 0.1 < 0.4 < _stats(empty_fraction=0.5)['empty']


def test_occluded_objects_annotate_only_their_visible_part():
    cfg = ShapesConfig(occlusion=1.0, truncation=0.0, max_objects=5, image_size=(160, 160))
    for index in range(20):
        _, anns = render_image(cfg, 'val', index)
        masks = [mask_utils.decode(dict(a['segmentation'], counts=a['segmentation']['counts'].encode()))
                 for a in anns]
        if len(masks) > 1:
            assert np.max(np.sum(masks, axis=0)) == 1  # visible masks never overlap
            return
    pytest.fail('no image with two annotated objects')


def test_written_atomically(tmp_path, monkeypatch):
    root = tmp_path / 'shapes'
    real = shapes.render_image

    def failing(cfg, split, index):
        if index == 3:
            raise RuntimeError('disk full')
        return real(cfg, split, index)

    monkeypatch.setattr(shapes, 'render_image', failing)
    with pytest.raises(RuntimeError, match='disk full'):
        generate(str(root), ShapesConfig(**SMALL))
    assert not root.exists() and os.listdir(tmp_path) == []  # nothing half-written is left
    monkeypatch.setattr(shapes, 'render_image', real)

    generate(str(root), ShapesConfig(**SMALL))
    assert is_complete(str(root), ShapesConfig(**SMALL)) and not is_complete(str(root), ShapesConfig(seed=9))
    with pytest.raises(FileExistsError, match='overwrite'):
        generate(str(root), ShapesConfig(**SMALL))
    manifest = generate(str(root), ShapesConfig(**dict(SMALL, num_val=2)), overwrite=True)
    assert manifest['splits']['val']['images'] == 2
    assert json.loads((root / shapes.MANIFEST).read_text())['splits']['val']['images'] == 2
    assert sorted(os.listdir(tmp_path)) == ['shapes']  # the replaced dataset is gone, no leftovers

    # overwrite replaces a generated dataset or an empty folder, nothing else (a mistyped path loses no data)
    (root / shapes.MANIFEST).unlink()
    assert not is_complete(str(root))
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'notes.txt').write_text('keep')
    for folder in (root, mine, mine / 'notes.txt'):
        with pytest.raises(FileExistsError, match=f'{folder} holds something other than a generated dataset '
                                                  r'\(no manifest\.json\); refusing to replace it'):
            generate(str(folder), ShapesConfig(**SMALL), overwrite=True)
    assert sorted(os.listdir(root)) == ['annotations', 'train', 'val'] and (mine / 'notes.txt').read_text() == 'keep'
    (tmp_path / 'empty').mkdir()
    generate(str(tmp_path / 'empty'), ShapesConfig(**SMALL), overwrite=True)
    assert is_complete(str(tmp_path / 'empty'), ShapesConfig(**SMALL))


@pytest.mark.parametrize('bad,message', [
    (dict(min_size=200, max_size=100), r'need 4 <= min_size <= max_size'),
    (dict(occlusion=1.5), r'occlusion and truncation must be in \[0, 1\]'),
    (dict(image_size=(8, 8)), r'image_size must be at least 32 x 32'),
    (dict(max_objects=0), r'max_objects must be >= 1'),
    (dict(seed=-1), r'seed must be >= 0, got -1'),
    (dict(image_size=(32, 48), min_size=40, max_size=60), r'min_size 40 does not fit a 32 x 48 image: keep it at '
                                                          r'most the shorter side, 32')])
def test_bad_options(tmp_path, bad, message):
    with pytest.raises(ValueError, match=f'ShapesConfig: {message}'):
        generate(str(tmp_path / 'x'), ShapesConfig(**bad))
    assert not (tmp_path / 'x').exists()
