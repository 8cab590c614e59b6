"""Model zoo commands.

    python tools/model_zoo.py list
    python tools/model_zoo.py download NAME [--dest checkpoints] [--retries 3] [--model-index model-index.yml]
    python tools/model_zoo.py publish WORK_DIR/iter_N.pth OUT_DIR [--name NAME]
    python tools/model_zoo.py convert-resnet resnet101.pth backbone.pth

`download` verifies the sha256 that the metafile lists and renames the file into place only when it
matches; `publish` drops the optimizer state and puts the hash into the file name (mmdet's convention)
and prints the two lines to paste into configs/acouplenet/metafile.yml; `convert-resnet` maps ImageNet
ResNet weights (torchvision or mmdet layout) onto AttentionBackbone's layout.
Where the project is installed as a package, `mim download acouplenet --config NAME --dest .` reads the
same index (without verifying hashes).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from projects.acouplenet import model_zoo  # noqa: E402
from projects.acouplenet.runtime import count_arg  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model-index', default=model_zoo.MODEL_INDEX, help='model-index.yml to read')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('list', help='list the models and whether they have weights')
    p = sub.add_parser('download', help='download and verify a checkpoint by model name')
    p.add_argument('name')
    p.add_argument('--dest', default='checkpoints')
    p.add_argument('--retries', type=count_arg(), default=3, help='attempts in all (default: %(default)s)')
    p.add_argument('--timeout', type=float, default=60.0, help='seconds without data before an attempt fails')
    p = sub.add_parser('publish', help='strip a training checkpoint for release and hash it')
    p.add_argument('checkpoint')
    p.add_argument('out_dir')
    p.add_argument('--name', help='release name (default: the checkpoint file name)')
    p = sub.add_parser('convert-resnet', help='ImageNet ResNet weights -> AttentionBackbone init checkpoint')
    p.add_argument('src')
    p.add_argument('dst')
    args = parser.parse_args(argv)
    if args.command == 'download' and not args.timeout > 0:  # 0 would make the socket non-blocking
        parser.error(f'--timeout must be more than 0 seconds, got {args.timeout}')

    try:
        if args.command == 'list':
            for name, entry in sorted(model_zoo.load_models(args.model_index).items()):
                results = [f'{k} {v}' for r in entry.get('Results') or [] for k, v in r['Metrics'].items()]
                weights = 'weights' if entry.get('Weights') else 'no weights'
                print(f'{name:55s} {", ".join(results) or "-":22s} {weights}')
        elif args.command == 'download':
            path = model_zoo.download_model(args.name, args.dest, args.model_index, retries=args.retries,
                                            timeout=args.timeout, progress=model_zoo.progress_bar(args.name))
            print(f'{path} (sha256 verified)')
        elif args.command == 'publish':
            out = model_zoo.publish(args.checkpoint, args.out_dir, args.name)
            print(f'{out["path"]}\n  Weights: <URL of the upload>/{osp.basename(out["path"])}\n'
                  f'  Metadata:\n    Weights SHA256: {out["sha256"]}')
        elif args.command == 'convert-resnet':
            out = model_zoo.convert_resnet(args.src, args.dst)
            print(f'{args.dst}: dropped {len(out["dropped"])} key(s) {out["dropped"][:4]}'
                  f'{" ..." if len(out["dropped"]) > 4 else ""}; use it as the wrapped ResNet\'s '
                  f'init_cfg=dict(type="Pretrained", checkpoint="{args.dst}")')
    except (KeyError, ValueError, model_zoo.ChecksumError, model_zoo.DownloadError, FileNotFoundError) as exc:
        sys.exit(f'error: {exc.args[0] if isinstance(exc, KeyError) else exc}')


if __name__ == '__main__':
    main()
