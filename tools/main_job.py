"""The main job: generate the shapes dataset if missing, train ACoupleNet on it, evaluate COCO box AP
on its val split and write a report (markdown + json) and a picture of detections and attention maps.

    python tools/main_job.py [--config CONFIG] [--work-dir DIR] [--data-root DIR] [--iters N]
                             [--num-train N] [--num-val N] [--seed S] [--data-seed S]

`bash tools/main_job.sh` runs the environment setup first (the README's command).
"""
import argparse
import json
import os.path as osp
import sys
import time

from mmengine.config import DictAction

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_CONFIG = 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'
METRIC_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


def parse_args(argv=None):
    from projects.acouplenet.runtime import count_arg, seed_arg
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='config to train (default: %(default)s)')
    parser.add_argument('--work-dir', default='work_dirs/main_job', help='logs, checkpoint and report')
    parser.add_argument('--data-root', default='data/shapes', help='where the generated dataset lives')
    parser.add_argument('--iters', type=count_arg(), help='training iterations (default: the config\'s)')
    parser.add_argument('--num-train', type=count_arg(), help='train images to generate (default: the generator\'s)')
    parser.add_argument('--num-val', type=count_arg(), help='val images to generate (default: the generator\'s)')
    parser.add_argument('--seed', type=seed_arg, default=0, help='seed of training (default: %(default)s)')
    parser.add_argument('--data-seed', type=seed_arg, default=None,
                        help='seed of the generated dataset, apart from the training seed so that runs of '
                        'several training seeds share one dataset: a complete dataset at --data-root of another '
                        'seed is generated again with this one (default: the dataset there, whatever its seed, '
                        'or one of seed 0 where there is none)')
    parser.add_argument('--regenerate', action='store_true',
                        help='generate the dataset again even if a complete one is there')
    parser.add_argument('--figure-images', type=count_arg(), default=4, help='val images in the picture')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override settings of the config, as key=value pairs (mmdet syntax)')
    args = parser.parse_args(argv)
    if not osp.isfile(config_path(args.config)):
        parser.error(f'--config {args.config}: not found (paths are relative to the repository root)')
    return args


def config_path(config: str) -> str:
    """A config given relative to the repository root (so that the job runs from any directory), or absolute."""
    return config if osp.isabs(config) else osp.join(REPO, config)


def ensure_dataset(root: str, num_train=None, num_val=None, seed=None, regenerate=False) -> dict:
    """Use the complete generated dataset at ``root``, or generate it.

    A complete dataset of the current format is used as it is unless
    ``regenerate`` or a split size or ``seed`` that differs from it is asked
    for; one of an older format is replaced. A folder without a manifest
    (written last by the generator) is not a generated dataset and is never
    overwritten. ``seed=None`` takes the dataset there whatever its seed and
    generates one with seed 0 where there is none.
    """
    from projects.acouplenet.shapes import FORMAT, MANIFEST, ShapesConfig, generate, is_complete
    cfg = ShapesConfig(seed=0 if seed is None else seed)
    cfg.num_train = cfg.num_train if num_train is None else num_train
    cfg.num_val = cfg.num_val if num_val is None else num_val
    manifest_path = osp.join(root, MANIFEST)
    if osp.exists(root) and not osp.isfile(manifest_path):
        raise SystemExit(f'error: {root} exists but holds no complete generated dataset ({MANIFEST} is missing); '
                         f'move it away or pass another --data-root')
    if is_complete(root):
        with open(manifest_path) as f:
            manifest = json.load(f)
        asked = {k: v for k, v in (('num_train', num_train), ('num_val', num_val), ('seed', seed)) if v is not None}
        differ = [f'{k} {manifest["config"][k]} (asked: {v})' for k, v in asked.items() if manifest['config'][k] != v]
        if not regenerate and not differ:
            print(f'[main_job] using the dataset in {root} (seed {manifest["config"]["seed"]})', flush=True)
            return manifest
        if differ:
            print(f'[main_job] the dataset in {root} has {", ".join(differ)}', flush=True)
    elif osp.exists(root):
        print(f'[main_job] {root} holds a dataset of another format than {FORMAT}; replacing it', flush=True)
    print(f'[main_job] generating the shapes dataset in {root} '
          f'({cfg.num_train} train / {cfg.num_val} val images, seed {cfg.seed})', flush=True)
    try:
        return generate(root, cfg, overwrite=osp.exists(root))
    except ValueError as exc:
        raise SystemExit(f'error: {exc}') from None


def build_cfg(args):
    from mmengine.config import Config

    from projects.acouplenet.runtime import (folder_arg_or_exit, inner_dataset_cfg, prepare_cfg, set_coco_data_root,
                                             set_iterations)
    cfg = Config.fromfile(config_path(args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    for loader, split in (('train_dataloader', 'train'), ('test_dataloader', 'val')):
        dataset = inner_dataset_cfg(cfg[loader].dataset)
        expected = f'annotations/instances_{split}.json'
        if dataset.get('ann_file') != expected:
            reads = dataset.get('ann_file') or f'a {dataset.get("type")} (no single ann_file)'
            raise SystemExit(f'error: --config {args.config} reads {reads} for its {loader}, not the shapes '
                             f'dataset\'s {expected}: the main job trains the configs under configs/shapes/ (or '
                             f'yours derived from one); train COCO and VOC configs with tools/train.py')
    set_coco_data_root(cfg, args.data_root)
    set_iterations(cfg, cfg.train_cfg.max_iters if args.iters is None else args.iters)
    # Evaluated once, by runner.test() after training: no validation loop (it would run at the last
    # iteration too).
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.work_dir = folder_arg_or_exit(args.work_dir, '--work-dir')
    cfg.randomness = dict(seed=args.seed)
    return prepare_cfg(cfg)


def device_name() -> str:
    """Where the runner trains: the GPU's name on CUDA (mmengine's default when one is there), else 'cpu'."""
    import torch
    return f'cuda ({torch.cuda.get_device_name()})' if torch.cuda.is_available() else 'cpu'


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU memory allocated by torch on CUDA, else the resident set size."""
    import resource

    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_report(work_dir: str, report: dict) -> None:
    """``report.json`` and ``report.md``, each written to a temporary file and renamed."""
    from projects.acouplenet.fileio import atomic_write
    atomic_write(json.dumps(report, indent=2), osp.join(work_dir, 'report.json'))
    m = report['metrics']
    lines = [
        f'# {osp.splitext(osp.basename(report["config"]))[0]} on the generated shapes dataset', '',
        f'- config: `{report["config"]}`',
        f'- data: {report["dataset"]["train_images"]} train / {report["dataset"]["val_images"]} val images '
        f'({report["dataset"]["val_objects"]} val objects, generated with seed {report["dataset"]["seed"]}), '
        f'`{report["dataset"]["root"]}`, sha256 `{report["dataset"]["sha256"][:16]}`',
        f'- training: {report["iterations"]} iterations of {report["batch_size"]} images in '
        f'{report["train_seconds"]:.0f} s ({report["seconds_per_iter"]:.3f} s/iter) on {report["device"]}, '
        f'seed {report["seed"]}',
        f'- host: {report["host"]["cpu"]} ({report["host"]["cpu_capability"]}), {report["host"]["threads"]} '
        f'threads, torch {report["host"]["torch"]}',
        *([f'- overrides: `{" ".join(f"{k}={v}" for k, v in report["cfg_options"].items())}`']
          if report['cfg_options'] else []),
        f'- evaluation: {report["eval_seconds"]:.0f} s; peak memory {report["peak_memory_mb"]:.0f} MB; '
        f'checkpoint `{report["checkpoint"]}`', '',
        '| AP | AP50 | AP75 | APs | APm | APl |', '|---|---|---|---|---|---|',
        '| ' + ' | '.join(f'{100 * m[k]:.1f}' for k in METRIC_KEYS) + ' |', '',
        f'![detections and attention maps]({osp.basename(report["figure"])})', '',
    ]
    atomic_write('\n'.join(lines), osp.join(work_dir, 'report.md'))


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    cfg = build_cfg(args)  # (first: a config that is not for the shapes data is refused before generating it)
    manifest = ensure_dataset(args.data_root, args.num_train, args.num_val, args.data_seed, args.regenerate)
    empty = [split for split in ('train', 'val') if manifest['splits'][split]['images'] < 1]
    if empty:  # before training, not after it: the job trains on train and evaluates on val
        raise SystemExit(f'error: the dataset in {args.data_root} has no {" and no ".join(empty)} images; generate '
                         f'one with images in both splits: --regenerate (--num-train N --num-val N)')

    from mmengine.runner import Runner

    from mmdet.apis import init_detector
    from projects.acouplenet.runtime import host_info
    from projects.acouplenet.shapes import fingerprint
    from projects.acouplenet.visualization import attention_figure

    runner = Runner.from_cfg(cfg)
    t0 = time.time()
    runner.train()
    train_seconds = time.time() - t0
    t0 = time.time()
    metrics = runner.test()
    eval_seconds = time.time() - t0
    checkpoint = osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')

    val_dir = osp.join(osp.abspath(args.data_root), 'val')
    with open(osp.join(args.data_root, 'annotations', 'instances_val.json')) as f:
        val = json.load(f)
    counts = {}
    for ann in val['annotations']:
        counts[ann['image_id']] = counts.get(ann['image_id'], 0) + 1
    busiest = sorted(val['images'], key=lambda im: -counts.get(im['id'], 0))[:args.figure_images]
    model = init_detector(cfg, checkpoint, device='cpu')
    figure = attention_figure(model, [osp.join(val_dir, im['file_name']) for im in busiest],
                              osp.join(cfg.work_dir, 'detections_and_attention.png'))

    report = dict(
        config=args.config,
        cfg_options=dict(args.cfg_options or {}),
        dataset=dict(root=osp.abspath(args.data_root), train_images=manifest['splits']['train']['images'],
                     val_images=manifest['splits']['val']['images'],
                     val_objects=manifest['splits']['val']['annotations'], seed=manifest['config']['seed'],
                     sha256=fingerprint(args.data_root)),
        metrics={k: float(metrics[f'coco/{k}']) for k in METRIC_KEYS},
        iterations=cfg.train_cfg.max_iters,
        batch_size=cfg.train_dataloader.batch_size,
        train_seconds=train_seconds,
        seconds_per_iter=train_seconds / cfg.train_cfg.max_iters,
        eval_seconds=eval_seconds,
        peak_memory_mb=peak_memory_mb(),
        total_seconds=time.time() - started,
        seed=args.seed,
        device=device_name(),
        host=host_info(),
        checkpoint=checkpoint,
        figure=figure,
    )
    write_report(cfg.work_dir, report)
    print(f'[main_job] AP {100 * report["metrics"]["bbox_mAP"]:.1f}, AP50 {100 * report["metrics"]["bbox_mAP_50"]:.1f} '
          f'after {report["iterations"]} iterations ({report["total_seconds"] / 60:.1f} min); report: '
          f'{osp.join(cfg.work_dir, "report.md")}', flush=True)
    return report


if __name__ == '__main__':
    main()
