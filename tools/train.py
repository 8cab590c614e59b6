"""Train a detector: mmdet's ``tools/train.py`` with the same arguments, for this project's configs.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

On a machine without CUDA, distributed runs use the gloo backend.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Optional, Tuple

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root, for `projects`
from projects.acouplenet.runtime import init_cpu_distributed, prepare_cfg, set_work_dir  # noqa: E402
from projects.acouplenet.safe_loading import (assert_checkpoint_fits, is_checkpoint_url,  # noqa: E402
                                              load_checkpoint_file)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true', help='enable automatically scaling LR.')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or (no value) from the latest one in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs (mmdet syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def check_resume_checkpoint(cfg, from_cli: bool = False) -> Optional[Tuple[str, dict]]:
    """Refuse, before anything is built, a checkpoint to resume from that is missing or unreadable.

    mmengine would fail on it only after building the runner, and without
    saying where the path came from. Reads the file once more (seconds, once
    per run); a URL is left to mmengine. ``from_cli``: the path came from
    ``--resume PATH`` rather than the config's own ``load_from``.

    Returns:
        The checkpoint's path and contents, for :func:`check_resume_fits` once
        the model is built; None where there is nothing to check.
    """
    auto = cfg.get('load_from') is None  # mmengine resumes from the work dir's last_checkpoint then
    if auto and not osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint')):
        return None  # no checkpoint yet: mmengine logs it and starts afresh
    path = find_latest_checkpoint(cfg.work_dir) if auto else cfg.load_from
    if not path or is_checkpoint_url(path):
        return None
    named = (f'{path}, the latest checkpoint of the work dir (named in {osp.join(cfg.work_dir, "last_checkpoint")})'
             if auto else f'--resume {path}' if from_cli else f'load_from={path} of the config (resume=True)')
    if not osp.isfile(path):
        raise SystemExit(f'{named}: checkpoint not found (--resume without a value resumes from the latest '
                         f'checkpoint of the work dir, --resume PATH from another)')
    try:
        return path, load_checkpoint_file(path)
    except ValueError as exc:
        raise SystemExit(f'cannot resume from {named}: {exc}. Resume from an earlier checkpoint of the work dir '
                         f'with --resume PATH') from exc


def check_resume_fits(runner, path: str, loaded: dict, config: str) -> None:
    """Refuse to resume from another model's checkpoint: mmengine would load what fits, warn, and then stop
    on the optimizer state with "loaded state dict contains a parameter group that doesn't match"."""
    try:
        assert_checkpoint_fits(runner.model, path, config, loaded=loaded)
    except ValueError as exc:
        raise SystemExit(f'cannot resume: {exc}') from exc


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f'config {args.config} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    resume_from = None
    if cfg.get('resume', False):
        resume_from = check_resume_checkpoint(cfg, from_cli=args.resume not in (None, 'auto'))
    prepare_cfg(cfg, amp=args.amp)
    init_cpu_distributed(args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if resume_from is not None:
        check_resume_fits(runner, *resume_from, args.config)
        del resume_from  # (mmengine reads the checkpoint again to resume: one copy in memory at a time)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
