"""Generate the "shapes" detection dataset (COCO format, instance masks), deterministically for a seed.

    python tools/generate_shapes.py data/shapes [--num-train 1200] [--num-val 200] [--seed 0]
        [--image-size 256 256] [--max-objects 7] [--occlusion 0.45] [--truncation 0.3] ... [--overwrite]

See projects/acouplenet/shapes.py for what the images hold.
"""
import argparse
import dataclasses
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from projects.acouplenet.shapes import ShapesConfig, generate  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out', help='dataset folder to create')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace a dataset generated there before (a folder with its manifest.json; nothing else)')
    for f in dataclasses.fields(ShapesConfig):
        flag = '--' + f.name.replace('_', '-')
        if f.name == 'image_size':
            parser.add_argument(flag, type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'), default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = ShapesConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesConfig)})
    cfg.image_size = tuple(cfg.image_size)
    try:
        manifest = generate(args.out, cfg, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    for split, counts in manifest['splits'].items():
        print(f'{split}: {counts["images"]} images, {counts["annotations"]} objects')
    print(f'written to {osp.abspath(args.out)}')


if __name__ == '__main__':
    main()
