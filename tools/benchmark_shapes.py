"""Train and evaluate the five shapes configs at the same budget and seed; print one table.

    python tools/benchmark_shapes.py [--iters N] [--seed S] [--work-dir DIR] [--data-root DIR]
                                     [--models acouplenet couplenet ...]

Each model runs as its own `tools/main_job.py` process (so its peak memory is its own) on the same
generated dataset; results are collected from the runs' report.json into `<work-dir>/benchmark.md`
and `benchmark.json`. Runs whose report exists are reused, so an interrupted benchmark continues.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MODELS = {
    'acouplenet': ('ACoupleNet', 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'),
    'couplenet': ('CoupleNet', 'configs/shapes/couplenet_r18-w32_1xb4-2k_shapes.py'),
    'rfcn': ('R-FCN (local only)', 'configs/shapes/rfcn_r18-w32_1xb4-2k_shapes.py'),
    'global': ('Global only', 'configs/shapes/couplenet-global-only_r18-w32_1xb4-2k_shapes.py'),
    'faster-rcnn': ('Faster R-CNN C4 (mmdet)', 'configs/shapes/faster-rcnn_r18-w32-c4_1xb4-2k_shapes.py'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=None, help="training iterations (default: the configs')")
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default='work_dirs/benchmark_shapes')
    parser.add_argument('--data-root', default='data/shapes')
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    return parser.parse_args(argv)


def table(rows) -> str:
    lines = ['| Model | AP | AP50 | AP75 | APs | APm | APl | s/iter | peak memory (MB) |',
             '|---|---|---|---|---|---|---|---|---|']
    for name, r in rows:
        m = r['metrics']
        lines.append(f'| {name} | {100 * m["bbox_mAP"]:.1f} | {100 * m["bbox_mAP_50"]:.1f} | '
                     f'{100 * m["bbox_mAP_75"]:.1f} | {100 * m["bbox_mAP_s"]:.1f} | {100 * m["bbox_mAP_m"]:.1f} | '
                     f'{100 * m["bbox_mAP_l"]:.1f} | {r["seconds_per_iter"]:.3f} | {r["peak_memory_mb"]:.0f} |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    rows = []
    for key in args.models:
        name, config = MODELS[key]
        work_dir = osp.join(args.work_dir, key)
        report_path = osp.join(work_dir, 'report.json')
        if not osp.isfile(report_path):
            cmd = [sys.executable, osp.join(REPO, 'tools', 'main_job.py'), '--config', config, '--work-dir', work_dir,
                   '--data-root', args.data_root, '--seed', str(args.seed)]
            if args.iters:
                cmd += ['--iters', str(args.iters)]
            print(f'[benchmark] {name}: {" ".join(cmd)}', flush=True)
            subprocess.run(cmd, cwd=REPO, check=True)
        with open(report_path) as f:
            rows.append((name, json.load(f)))
    text = table(rows)
    iters = {r['iterations'] for _, r in rows}
    header = (f'Shapes dataset, {rows[0][1]["dataset"]["train_images"]} train / {rows[0][1]["dataset"]["val_images"]} '
              f'val images; {"/".join(map(str, sorted(iters)))} iterations of {rows[0][1]["batch_size"]} images; '
              f'seed {args.seed}; COCO box AP on val.')
    with open(osp.join(args.work_dir, 'benchmark.md'), 'w') as f:
        f.write(header + '\n\n' + text + '\n')
    with open(osp.join(args.work_dir, 'benchmark.json'), 'w') as f:
        json.dump({name: r for name, r in rows}, f, indent=2)
    print(header)
    print(text)


if __name__ == '__main__':
    main()
