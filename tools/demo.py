"""Detections and attention maps side by side (the paper's Fig. 5), on CPU or GPU.

    python tools/demo.py IMAGE [IMAGE ...] --config CONFIG --checkpoint CKPT [--out demo.png]
                         [--device cpu|cuda:0] [--score-thr 0.3]

One row per image: the detections, then one panel per attention block (strides 4, 8, 16).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def main(argv=None):
    from projects.acouplenet.runtime import device_arg, folder_arg_or_exit
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', nargs='+', help='image files')
    parser.add_argument('--config', required=True)
    parser.add_argument('--checkpoint', required=True)
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
    missing = [p for p in args.images + [args.config, args.checkpoint] if not osp.isfile(p)]
    if missing:
        sys.exit(f'error: not found: {", ".join(missing)}')
    if any(osp.exists(args.out) and osp.samefile(args.out, p) for p in args.images + [args.config, args.checkpoint]):
        sys.exit(f'error: --out {args.out} is one of the inputs and would be overwritten; choose another --out')

    from projects.acouplenet.safe_loading import init_detector_strict
    from projects.acouplenet.visualization import attention_figure
    try:
        model = init_detector_strict(args.config, args.checkpoint, device=args.device)
        out = attention_figure(model, args.images, args.out, score_thr=args.score_thr)
    except ValueError as exc:
        sys.exit(f'error: {exc}')
    print(out)
    return out


if __name__ == '__main__':
    main()
