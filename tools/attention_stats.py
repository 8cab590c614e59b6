"""How strongly the trained attention maps gate objects of each size and the background.

    python tools/attention_stats.py CONFIG CHECKPOINT [--data-root data/shapes] [--split val]
                                    [--max-images N] [--device cpu] [--out stats.json]

Runs the detector on a COCO-format split and prints, per attention block (stride 4, 8, 16), the mean
sigmoid attention at the centre of the ground-truth boxes, their maximum and their mean, by COCO object
size, and on the cells no box touches (the background, i.e. the context the global branch pools).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def format_table(rows):
    lines = ['| stride | region | n | centre | max | mean |', '|---|---|---|---|---|---|']
    lines += [f'| {r["stride"]} | {r["region"]} | {r["n"]} | {r["centre"]:.3f} | {r["max"]:.3f} | {r["mean"]:.3f} |'
              for r in rows]
    return '\n'.join(lines)


def main(argv=None):
    from projects.acouplenet.runtime import count_arg, device_arg, folder_arg_or_exit
    from projects.acouplenet.safe_loading import is_checkpoint_url
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--data-root', default='data/shapes',
                        help='holds annotations/instances_<split>.json and <split>/ images')
    parser.add_argument('--split', default='val')
    parser.add_argument('--max-images', type=count_arg(), default=None, help='default: every image')
    parser.add_argument('--device', default='cpu', type=device_arg, help='cpu, cuda or cuda:N')
    parser.add_argument('--out', default=None, help='also write the rows as json')
    args = parser.parse_args(argv)
    if args.out:
        folder_arg_or_exit(osp.dirname(osp.abspath(args.out)), "--out's folder")
    ann_file = osp.join(args.data_root, 'annotations', f'instances_{args.split}.json')
    local_files = [args.config, ann_file] + ([] if is_checkpoint_url(args.checkpoint) else [args.checkpoint])
    missing = [p for p in local_files if not osp.isfile(p)]
    if missing:
        sys.exit(f'error: not found: {", ".join(missing)} (generate the data with tools/generate_shapes.py '
                 'or pass --data-root)')

    from projects.acouplenet.fileio import atomic_write
    from projects.acouplenet.model_zoo import ChecksumError, DownloadError
    from projects.acouplenet.safe_loading import init_detector_strict
    from projects.acouplenet.visualization import attention_by_object_size
    try:
        model = init_detector_strict(args.config, args.checkpoint, device=args.device)
    except (ValueError, ChecksumError, DownloadError) as exc:  # (the last two: a checkpoint URL)
        sys.exit(f'error: {exc}')
    if not getattr(model.backbone, 'attention_blocks', None):
        sys.exit(f'error: {args.config} has no attention blocks (attention_stages=()): nothing to measure')
    rows = attention_by_object_size(model, ann_file, osp.join(args.data_root, args.split), args.max_images)
    print(format_table(rows))
    if args.out:
        atomic_write(json.dumps(rows, indent=2), args.out)
    return rows


if __name__ == '__main__':
    main()
