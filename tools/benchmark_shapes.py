"""Train and evaluate the shapes configs at the same budget and seed(s); print one table per seed.

    python tools/benchmark_shapes.py [--iters N] [--seed S [S ...]] [--work-dir DIR] [--data-root DIR]
                                     [--data-seed S] [--models acouplenet couplenet ...] [--collect-only]

Each model runs as its own `tools/main_job.py` process (so its peak memory is its own) on the same
generated dataset, whatever the training seed (the one at `--data-root`, generated with seed 0 where there
is none or with `--data-seed`), in `<work-dir>/seed<S>/<model>`; results are collected from the runs'
report.json into `<work-dir>/benchmark.md` and `benchmark.json`. A run whose report exists is reused, so an interrupted
benchmark continues; a report of another run (seed, schedule, config, overrides or dataset) is refused,
not reused. With several seeds a last table gives each model's AP by seed, its mean and, where CoupleNet
is among the models, the paired gap to CoupleNet at each seed, with the mean gap and its standard error:
on this small dataset the seed moves AP by several points, as much as the differences between the models.
`--collect-only` prints the tables of the runs that are there and trains nothing (while a benchmark is still
running, or to read a grid of which some runs were never made): a missing run shows as `-`.
"""
import argparse
import functools
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
from typing import Optional

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)  # for projects.acouplenet without an installed package
ACOUPLENET = 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'
COUPLENET = 'configs/shapes/couplenet_r18-w32_1xb4-2k_shapes.py'
RFCN = 'configs/shapes/rfcn_r18-w32_1xb4-2k_shapes.py'
# key: (name, config, --cfg-options of main_job)
MODELS = {
    'acouplenet': ('ACoupleNet', ACOUPLENET, {}),
    'couplenet': ('CoupleNet', COUPLENET, {}),
    'rfcn': ('R-FCN (local only)', RFCN, {}),
    'global': ('Global only', 'configs/shapes/couplenet-global-only_r18-w32_1xb4-2k_shapes.py', {}),
    'faster-rcnn': ('Faster R-CNN C4 (mmdet)', 'configs/shapes/faster-rcnn_r18-w32-c4_1xb4-2k_shapes.py', {}),
    # The investigation of docs/shapes_experiments.md: the paper's attention loss weight (1) is heavy for a
    # small backbone, and its three gates in series close on small objects where any one gate alone leaves
    # them open.
    'acouplenet-att0.1': ('ACoupleNet, attention loss weight 0.1', ACOUPLENET,
                          {'model.loss_attention.loss_weight': 0.1}),
    # The paper's "inserted in each stage's last residual block" read literally: the three maps gate the last
    # blocks' residual branches, and the shortcuts pass the ungated features on.
    'acouplenet-branch': ('ACoupleNet, gates on the last residual branches', ACOUPLENET,
                          {'model.backbone.attention_gate': 'branch'}),
    # The paper's Table IV: "3x PSRoI pooling", three local FCNs coupled as CoupleNet couples its two branches.
    'rfcn-3x': ('R-FCN, three local FCNs coupled', RFCN, {'model.roi_head.bbox_head.local_branches': 3}),
    # The paper's Table III: the 2x context region on the global branch (the configs), on neither, or pooled
    # position-sensitively on the local branch instead.
    'couplenet-no-context': ('CoupleNet, no context region', COUPLENET,
                             {'model.roi_head.bbox_head.with_context': False}),
    'couplenet-local-context': ('CoupleNet, context on the local branch', COUPLENET,
                                {'model.roi_head.bbox_head.context_branch': 'local'}),
    # The paper's Table I: the other eight normalisation x coupling pairs (the configs: 'conv' + 'sum').
    **{f'couplenet-{norm}-{coupling}': (f'CoupleNet, {label} + {coupling}', COUPLENET,
                                        {'model.roi_head.bbox_head.normalization': norm,
                                         'model.roi_head.bbox_head.coupling': coupling})
       for norm, label in (('none', 'no normalisation'), ('l2', 'L2'), ('conv', '1x1 conv'))
       for coupling in ('sum', 'prod', 'max') if (norm, coupling) != ('conv', 'sum')},
    # The paper's Table V: one attention block, after conv2, conv3 or conv4 (res_layers[0], [1], [2]).
    **{f'acouplenet-s{stride}': (f'ACoupleNet, attention at stride {stride} only', ACOUPLENET,
                                 {'model.backbone.attention_stages': [stage]})
       for stage, stride in enumerate((4, 8, 16))},
}
DEFAULT_MODELS = ['acouplenet', 'couplenet', 'rfcn', 'global', 'faster-rcnn']


def parse_args(argv=None):
    from projects.acouplenet.runtime import count_arg, seed_arg
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=count_arg(), default=None, help="training iterations (default: the configs')")
    parser.add_argument('--seed', '--seeds', dest='seeds', type=seed_arg, nargs='+', default=[0],
                        help='training seed(s): every model is trained once per seed')
    parser.add_argument('--work-dir', default='work_dirs/benchmark_shapes')
    parser.add_argument('--data-root', default='data/shapes')
    parser.add_argument('--data-seed', type=seed_arg, default=None,
                        help="seed of the dataset every run shares (default: the dataset at --data-root, or "
                        "one generated with seed 0 where there is none); see main_job's --data-seed")
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=DEFAULT_MODELS)
    parser.add_argument('--collect-only', action='store_true',
                        help='print the tables of the finished runs in --work-dir and train nothing; a missing run '
                        'shows as "-" (benchmark.md and benchmark.json are left as they are)')
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


def seed_table(reports: dict, seeds: list, models: list) -> str:
    """AP of each model at each seed, the mean, and the paired gaps to CoupleNet (``reports[seed][key]``).

    A run that is missing (None, or no key) shows as ``-`` and leaves its seed out of that model's mean and,
    with its CoupleNet run, out of the paired gaps; a mean over fewer seeds than the table's says over how many.
    """
    def ap(seed, key):
        report = reports.get(seed, {}).get(key)
        return None if report is None else 100 * report['metrics']['bbox_mAP']

    def over(count):
        return f' over {count} seed{"s" if count > 1 else ""}' if count < len(seeds) else ''

    paired = 'couplenet' in models
    baseline = [ap(s, 'couplenet') for s in seeds] if paired else []
    lines = ['| Model | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | mean |'
             + (' paired gap to CoupleNet |' if paired else ''),
             '|---|' + '---|' * (len(seeds) + 1) + ('---|' if paired else '')]
    for key in models:
        values = [ap(s, key) for s in seeds]
        present = [v for v in values if v is not None]
        mean = f'{statistics.mean(present):.1f}{over(len(present))}' if present else '-'
        line = f'| {MODELS[key][0]} | ' + ' | '.join('-' if v is None else f'{v:.1f}' for v in values) + f' | {mean} |'
        if paired:
            gaps = [None if v is None or b is None else v - b for v, b in zip(values, baseline)]
            known = [g for g in gaps if g is not None]
            if key == 'couplenet' or not known:
                line += ' - |'
            else:
                summary = f'mean {statistics.mean(known):+.1f}{over(len(known))}'
                if len(known) > 1:  # of the mean: the gaps' sample standard deviation / sqrt(seeds)
                    summary += f', standard error {statistics.stdev(known) / math.sqrt(len(known)):.1f}'
                line += f' {", ".join("-" if g is None else f"{g:+.1f}" for g in gaps)} ({summary}) |'
        lines.append(line)
    return '\n'.join(lines)


def config_schedule(config: str, options: dict) -> tuple:
    """The training iterations and learning rate of ``config`` with ``options`` merged, as main_job reads it."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.merge_from_dict(options)
    return cfg.train_cfg.max_iters, cfg.optim_wrapper.optimizer.lr


def load_report(report_path: str) -> dict:
    with open(report_path) as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def dataset_fingerprint(data_root: str) -> str:
    """The dataset's sha256, read once per benchmark (every reused run compares against it)."""
    from projects.acouplenet.shapes import fingerprint
    return fingerprint(data_root)


def check_reusable(report: dict, report_path: str, expected: dict) -> None:
    """Refuse a report that another run wrote (another seed, schedule, config, overrides or dataset).

    The dataset is compared by folder and, where the report records one (reports since 2026-11-26), by
    content: the data at the same folder may have been generated again since.
    """
    found = dict(config=report['config'], seed=report['seed'], iterations=report['iterations'],
                 learning_rate=report['learning_rate'], cfg_options=report.get('cfg_options', {}),
                 data_root=report['dataset']['root'], data_seed=report['dataset']['seed'])
    differ = [f'{k} {found[k]!r} (asked: {expected[k]!r})' for k in expected if found[k] != expected[k]]
    recorded = report['dataset'].get('sha256')
    if recorded and not differ:
        current = dataset_fingerprint(expected['data_root'])
        if current != recorded:
            differ.append(f'dataset sha256 {recorded[:16]} (the data there now: {current[:16]})')
    if differ:
        raise SystemExit(f'error: {report_path} is the report of another run: {"; ".join(differ)}. Pass another '
                         '--work-dir, or delete that run\'s folder to train it again.')


def run(key: str, seed: int, args) -> Optional[dict]:
    """The report of ``key`` trained at ``seed``: reused when its run is there, else trained now (with
    ``--collect-only``: None)."""
    name, config, options = MODELS[key]
    work_dir = osp.join(args.work_dir, f'seed{seed}', key)
    report_path = osp.join(work_dir, 'report.json')
    if osp.isfile(report_path):
        from projects.acouplenet.runtime import short_schedule_lr_scale
        report = load_report(report_path)
        planned, learning_rate = config_schedule(config, options)
        report.setdefault('learning_rate', learning_rate)  # (reports before 2026-12-06: the config's, always)
        iterations = planned if args.iters is None else args.iters
        expected = dict(config=config, seed=seed, iterations=iterations,
                        learning_rate=learning_rate * short_schedule_lr_scale(planned, iterations), cfg_options=options,
                        data_root=args.data_root)
        if args.data_seed is not None:
            expected['data_seed'] = args.data_seed
        check_reusable(report, report_path, expected)
        print(f'[benchmark] {name}, seed {seed}: reusing {report_path}', flush=True)
        return report
    if args.collect_only:
        print(f'[benchmark] {name}, seed {seed}: not run ({report_path} does not exist)', flush=True)
        return None
    # No time budget: every model trains the same schedule, however long it takes on this machine.
    cmd = [sys.executable, osp.join(REPO, 'tools', 'main_job.py'), '--config', config, '--work-dir', work_dir,
           '--data-root', args.data_root, '--seed', str(seed), '--time-budget', '0']
    if args.iters is not None:
        cmd += ['--iters', str(args.iters)]
    if args.data_seed is not None:
        cmd += ['--data-seed', str(args.data_seed)]
    if options:
        cmd += ['--cfg-options', *(f'{k}={v}' for k, v in options.items())]
    print(f'[benchmark] {name}, seed {seed}: {" ".join(cmd)}', flush=True)
    returncode = subprocess.run(cmd, cwd=REPO).returncode
    if returncode != 0:
        raise SystemExit(f'error: {name}, seed {seed} failed (exit status {returncode}; its output is above, its '
                         f'logs under {work_dir}); the runs finished before it are kept and reused by the next call')
    return load_report(report_path)


def main(argv=None):
    args = parse_args(argv)
    # Absolute, as main_job runs from the repository root and records the dataset's absolute path.
    args.work_dir, args.data_root = osp.abspath(args.work_dir), osp.abspath(args.data_root)
    dataset_fingerprint.cache_clear()  # the data may have been generated again since an earlier call
    from projects.acouplenet.runtime import folder_arg_or_exit
    if args.collect_only:
        if not osp.isdir(args.work_dir):
            problem = 'is a file, not a folder' if osp.exists(args.work_dir) else 'does not exist'
            raise SystemExit(f'error: --work-dir {args.work_dir} {problem}; --collect-only reads the runs of '
                             'an earlier benchmark there (give its --work-dir)')
    else:
        os.makedirs(folder_arg_or_exit(args.work_dir, '--work-dir'), exist_ok=True)
    reports = {seed: {key: run(key, seed, args) for key in args.models} for seed in args.seeds}
    finished = [r for by_key in reports.values() for r in by_key.values() if r is not None]
    if not finished:
        raise SystemExit(f'error: none of the asked runs (seeds {args.seeds}, models {args.models}) has finished '
                         f'under {args.work_dir}; run without --collect-only to train them')
    first = finished[0]
    iters = {r['iterations'] for r in finished}
    header = (f'Shapes dataset (seed {first["dataset"]["seed"]}), {first["dataset"]["train_images"]} train / '
              f'{first["dataset"]["val_images"]} val images; {"/".join(map(str, sorted(iters)))} iterations of '
              f'{first["batch_size"]} images; COCO box AP on val.')
    parts = [header]
    for seed, by_key in reports.items():
        rows = [(MODELS[key][0], r) for key, r in by_key.items() if r is not None]
        parts += [f'Seed {seed}:', table(rows) if rows else 'no finished runs']
    if len(args.seeds) > 1:
        parts += ['AP by seed:', seed_table(reports, args.seeds, args.models)]
    text = '\n\n'.join(parts)
    if args.collect_only:
        print(text)
        return reports
    from projects.acouplenet.fileio import atomic_write
    atomic_write(text + '\n', osp.join(args.work_dir, 'benchmark.md'))
    atomic_write(json.dumps({str(seed): {MODELS[key][0]: r for key, r in by_key.items()}
                             for seed, by_key in reports.items()}, indent=2), osp.join(args.work_dir, 'benchmark.json'))
    print(text)
    return reports


if __name__ == '__main__':
    main()
