"""Detections and attention maps side by side (the paper's Fig. 5), on CPU or GPU.

    python tools/demo.py IMAGE|FOLDER [...] --config CONFIG --checkpoint CKPT [--out demo.png]
                         [--device cpu|cuda:0] [--score-thr 0.3]

One row per image: the detections, then one panel per attention block (strides 4, 8, 16). A folder
stands for the images in it (not its subfolders), sorted by name, as DetInferencer reads one.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv=None):
    from projects.acouplenet.runtime import device_arg, folder_arg_or_exit
    from projects.acouplenet.safe_loading import is_checkpoint_url
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files, or folders of them')
    parser.add_argument('--config', required=True)
    parser.add_argument('--checkpoint', required=True, help='checkpoint file or URL')
    parser.add_argument('--out', default='demo.png', help='picture to write (PNG; any format matplotlib writes)')
    parser.add_argument('--device', default='cpu', type=device_arg, help='cpu, cuda or cuda:N')
    parser.add_argument('--score-thr', type=float, default=0.3, help='draw detections scoring at least this')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr is a score, from 0 to 1; got {args.score_thr}')
    from matplotlib.backend_bases import FigureCanvasBase
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = osp.splitext(args.out)[1][1:].lower()
    if extension and extension not in formats:  # checked before the model runs, not when saving
        parser.error(f'--out {args.out}: cannot write .{extension} pictures; name a .png file (or one of '
                     f'{", ".join(sorted(formats))})')
    folder_arg_or_exit(osp.dirname(osp.abspath(args.out)), "--out's folder")
    args.images = _expand_folders(args.images)
    local_files = args.images + [args.config] + ([] if is_checkpoint_url(args.checkpoint) else [args.checkpoint])
    missing = [p for p in local_files if not osp.isfile(p)]
    if missing:
        sys.exit(f'error: not found: {", ".join(missing)}')
    if any(osp.exists(args.out) and osp.samefile(args.out, p) for p in local_files):
        sys.exit(f'error: --out {args.out} is one of the inputs and would be overwritten; choose another --out')

    from projects.acouplenet.model_zoo import ChecksumError, DownloadError
    from projects.acouplenet.safe_loading import init_detector_strict
    from projects.acouplenet.visualization import attention_figure
    try:
        model = init_detector_strict(args.config, args.checkpoint, device=args.device)
        out = attention_figure(model, args.images, args.out, score_thr=args.score_thr)
    except (ValueError, ChecksumError, DownloadError) as exc:  # (the last two: a checkpoint URL)
        sys.exit(f'error: {exc}')
    print(out)
    return out


def _expand_folders(paths):
    """Each folder in ``paths`` replaced by its image files (DetInferencer's extensions), sorted by name."""
    from mmdet.apis.det_inferencer import IMG_EXTENSIONS
    images = []
    for path in paths:
        if not osp.isdir(path):
            images.append(path)
            continue
        found = sorted(osp.join(path, name) for name in os.listdir(path)
                       if name.lower().endswith(IMG_EXTENSIONS) and osp.isfile(osp.join(path, name)))
        if not found:
            sys.exit(f'error: folder {path} holds no images ({", ".join(IMG_EXTENSIONS)}); '
                     f'name image files or a folder of them')
        images += found
    return images


if __name__ == '__main__':
    main()
