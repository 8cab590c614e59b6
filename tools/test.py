"""Test (and evaluate) a checkpoint: mmdet's ``tools/test.py`` with the same arguments.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
                                          [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}] [--tta]
                                          [--branches]

``--branches`` (this project's) tests a coupled model once as it is and once per branch alone, and prints
the metrics side by side, then how often the coupled top class of a RoI was each branch's own (both
branches', one's, neither's), how often the coupled class and each branch's own was right in each case (the
true class of a RoI: that of the gt box it overlaps at IoU >= 0.5, else the background) and, for a model
coupled by 'max', the share of RoIs whose top class score each branch supplied.
"""
import argparse
import os
import os.path as osp
import sys
from typing import NamedTuple, Optional

import torch
from mmengine.config import Config, DictAction
from mmengine.dist import all_reduce, is_main_process
from mmengine.runner import Runner

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmdet.registry import RUNNERS

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root, for `projects`
from projects.acouplenet import CoupledBBoxHead  # noqa: E402
from projects.acouplenet.runtime import (apply_tta, init_cpu_distributed, metrics_table, prepare_cfg,  # noqa: E402
                                         set_work_dir)
from projects.acouplenet.safe_loading import assert_checkpoint_fits, is_checkpoint_url  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL')
    parser.add_argument('--work-dir', help='the dir to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save painted images under work_dir/timestamp/show_dir')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs (mmdet syntax)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: the config\'s tta_model / tta_pipeline, else mmdet\'s '
                             'horizontal flip merged by NMS')
    parser.add_argument('--branches', action='store_true',
                        help='test a coupled model as it is and with each branch alone (its output normalised as '
                             'in the coupling, the other branches left out), and print the metrics side by side, '
                             'then which branches\' own top class the coupled one was and, for the \'max\' '
                             'coupling, which branch supplied the RoIs\' top class scores')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit(f'--out {args.out}: the dump file must end in .pkl or .pickle')
    if args.branches and (args.out or args.show or args.show_dir):
        raise SystemExit('--branches tests the model several times and --out / --show / --show-dir would keep '
                         'only the last; run --branches without them, and each dump as a test of its own')
    for kind, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path) and not (kind == 'checkpoint' and is_checkpoint_url(path)):
            raise SystemExit(f'{kind} {path} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    set_work_dir(cfg, args.work_dir, args.config)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        apply_tta(cfg)
    prepare_cfg(cfg)
    init_cpu_distributed(args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    # mmengine only warns when a checkpoint does not fit; a test of half-random weights is no test.
    assert_checkpoint_fits(runner.model, args.checkpoint, args.config)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    if args.branches:
        return evaluate_branches(runner, args.config)
    return runner.test()


class BranchResults(NamedTuple):
    """What ``--branches`` measured."""
    metrics: dict  # {'coupled': an evaluator's metrics, 'local': ..., 'global': ...}
    # Below, {'rois': {column: share}, 'objects': {column: share}}: shares of all the RoIs scored and of those
    # whose coupled top class is an object class.
    # The RoIs by the branches whose own top class is the coupled one: 'all', 'local only', ..., 'none'.
    agreement: dict
    # 'max' coupling: the RoIs by the branch whose top class score the maximum took; else None.
    max_sources: Optional[dict]
    # {'coupled': {column: share}, 'local': ..., 'global': ...}: of the object RoIs in each agreement column, the
    # share whose coupled class, or the branch's own top class, is the true one; None without gt boxes.
    correct: Optional[dict] = None


def evaluate_branches(runner: Runner, config: str) -> BranchResults:
    """Test the coupled model, then each branch alone; print the metrics and how the coupling decided as tables."""
    model = getattr(runner.model, 'module', runner.model)  # unwrap DDP and the TTA model
    head = getattr(getattr(model, 'roi_head', None), 'bbox_head', None)
    if not (isinstance(head, CoupledBBoxHead) and head.coupled):
        raise SystemExit(f'--branches: {config} has no coupled CoupledBBoxHead (R-FCN and global only have one '
                         f'branch): nothing to test apart')
    with head.count_decisions() as counts:
        metrics = {'coupled': runner.test()}
    for branch in head.branch_names:
        with head.branch_alone(branch):
            metrics[branch] = runner.test()
    for count in counts.values():
        all_reduce(count)  # each process counted its own images
    labels = head.agreement_labels()
    # Most agreeing branches first: 'all', each branch alone, ..., 'none'.
    order = sorted(range(len(labels)), key=lambda column: (-bin(column).count('1'), column))
    agreement = shares(counts['agreement'][:, order], [labels[column] for column in order])
    max_sources = shares(counts['max_source'], head.branch_names) if 'max_source' in counts else None
    correct = None
    if counts['labelled'].sum() > 0:
        labelled = counts['labelled'][order].double()
        rates = torch.where(labelled > 0, counts['correct'][:, order] / labelled.clamp(min=1), -1.0)  # -1: '-'
        correct = {row: dict(zip(agreement['objects'], rate.tolist()))
                   for row, rate in zip(('coupled', ) + head.branch_names, rates)}
    if is_main_process():
        print(metrics_table(metrics, corner='scores of'))
        num_rois = f'percent of {int(counts["agreement"][0].sum())} RoIs and of the ' \
                   f'{int(counts["agreement"][1].sum())} whose top class is an object class'
        tables = [('The coupled top class of a RoI was the own top class of', agreement)]
        if max_sources is not None:
            tables.append(('The max took the top class score of a RoI from', max_sources))
        for title, table in tables:
            print(f'\n{title} ({num_rois}):\n')
            print(metrics_table({'all RoIs': table['rois'], 'top class an object': table['objects']}, corner='RoIs'))
        if correct is not None:
            print(f'\nRight: the top class that was the RoI\'s true class (that of the gt box it overlaps at IoU >= '
                  f'0.5, else the background), in percent of the {int(counts["labelled"].sum())} RoIs whose top class '
                  f'is an object class, by the branches whose own top class the coupled one was:\n')
            print(metrics_table({'coupled' if row == 'coupled' else f'{row} alone': rates
                                 for row, rates in correct.items()}, corner='right'))
    return BranchResults(metrics, agreement, max_sources, correct)


def shares(counts, columns) -> dict:
    """(2, K) counts of all RoIs and of the object RoIs -> {'rois': {column: share}, 'objects': {...}}."""
    return {row: dict(zip(columns, (n / max(int(n.sum()), 1)).tolist()))
            for row, n in zip(('rois', 'objects'), counts.double())}


if __name__ == '__main__':
    main()
