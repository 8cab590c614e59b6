"""The main job: generate the shapes dataset if missing, train ACoupleNet on it, evaluate COCO box AP
on its val split and write a report (markdown + json) and a picture of detections and attention maps.

    python tools/main_job.py [--config CONFIG] [--work-dir DIR] [--data-root DIR] [--iters N]
                             [--time-budget MIN] [--num-train N] [--num-val N] [--seed S] [--data-seed S]

`bash tools/main_job.sh` runs the environment setup first (the README's command).

The job is sized for 20 minutes on 2 CPU cores (--time-budget): it times a few training iterations on
this machine first, and where the config's schedule would not fit, trains a shorter one (the learning-rate
schedule scaled alike, its rate raised) and says so in its log and report; as it trains, it re-fits the
length to the budget from its own speed (KeepToBudgetHook). --iters N trains N iterations whatever they take.
"""
import argparse
import copy
import gc
import json
import math
import os.path as osp
import sys
import tempfile
import time
from typing import Tuple

import numpy as np
from mmengine.config import DictAction
from mmengine.hooks import CheckpointHook, Hook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_CONFIG = 'configs/shapes/acouplenet_r18-w32_1xb4-2k_shapes.py'
METRIC_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
# Evaluation takes at most a quarter of a training iteration per val image on the hosts seen (the AVX2
# host: 36-48 s for 200 images at 0.86-1.02 s/iter, 0.20-0.24 of an iteration each); with the figure, what
# the budget keeps after training.
EVAL_SECONDS_PER_IMAGE_PER_ITER_SECOND = 0.25
FIGURE_SECONDS = 20.0
# Of the budget, kept back for what the re-fits (KeepToBudgetHook) cannot see: the speed over the last
# iterations after the last re-fit, the evaluation's own spread and the run's start-up. (Before the run
# re-fitted itself, the margin also had to cover the host's load over the whole run, which moved its speed
# by several percent: 7.5% then, and the jobs ended 2-3 minutes inside the budget.)
BUDGET_MARGIN = 0.04
# As it trains, a budgeted run re-fits its length every REFIT_INTERVAL iterations from the median time of
# the last REFIT_WINDOW, and lengthens itself only where REFIT_MIN_GAIN more iterations fit, at that speed and
# at its median speed so far (KeepToBudgetHook).
REFIT_INTERVAL = 50
REFIT_WINDOW = 100
REFIT_MIN_GAIN = 100


def minutes_arg(value: str) -> float:
    """``--time-budget``: minutes, 0 (no budget) or more."""
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a number of minutes') from None
    if not (math.isfinite(minutes) and minutes >= 0):
        raise argparse.ArgumentTypeError(f'must be 0 (no budget) or more minutes, got {value}')
    return minutes


def parse_args(argv=None):
    from projects.acouplenet.runtime import count_arg, seed_arg
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG, help='config to train (default: %(default)s)')
    parser.add_argument('--work-dir', default='work_dirs/main_job', help='logs, checkpoint and report')
    parser.add_argument('--data-root', default='data/shapes', help='where the generated dataset lives')
    parser.add_argument('--iters', type=count_arg(),
                        help='training iterations, whatever they take; fewer than the config\'s train at a raised '
                        'learning rate, as a budgeted run does (default: the config\'s, or fewer where they would not '
                        'fit --time-budget)')
    parser.add_argument('--time-budget', type=minutes_arg, default=20.0, metavar='MIN',
                        help='minutes for the whole job without --iters: a shorter schedule where a timing of a few '
                        'iterations says the config\'s would not fit; 0 = no budget (default: %(default)s)')
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

    from projects.acouplenet.runtime import folder_arg_or_exit, inner_dataset_cfg, prepare_cfg, set_coco_data_root
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
    # Evaluated once, by runner.test() after training: no validation loop (it would run at the last
    # iteration too).
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.work_dir = folder_arg_or_exit(args.work_dir, '--work-dir')
    cfg.randomness = dict(seed=args.seed)
    return prepare_cfg(cfg)


def measure_seconds_per_iter(cfg, iters: int = 8, warmup: int = 3) -> float:
    """Seconds one training iteration of ``cfg`` takes on this machine: the median of ``iters`` iterations
    (after ``warmup`` more, whose allocations and data-loader start make them slower) of a throwaway runner
    (the median, as a data loader that restarts at the end of a tiny dataset makes a few iterations slow).

    The runner logs only warnings, writes into a temporary folder, saves no
    checkpoint and has a logger, message hub and visualizer of its own; the
    real run, which seeds everything again when it is built, trains exactly as
    without this timing.
    """
    from mmengine.runner import Runner

    from projects.acouplenet.runtime import set_iterations
    # (no more than the run itself has: a run of a few iterations is timed in a few)
    iters = min(iters, cfg.train_cfg.max_iters)
    warmup = min(warmup, iters)
    probe = copy.deepcopy(cfg)
    set_iterations(probe, warmup + iters)
    probe.default_hooks.checkpoint = None
    probe.log_level = 'WARNING'
    probe.experiment_name = probe.visualizer.name = f'main_job_timing_{time.time_ns()}'
    with tempfile.TemporaryDirectory(prefix='main_job_timing_') as tmp:
        probe.work_dir = tmp
        runner = Runner.from_cfg(probe)
        runner.train()
        seconds = runner.message_hub.get_scalar('train/time').data[0][warmup:]
        del runner
        gc.collect()  # ends its persistent data-loader workers before the real run starts its own
    return float(np.median(seconds))


def seconds_after_training(seconds_per_iter: float, val_images: int) -> float:
    """About how long the evaluation of ``val_images`` images and the figure take, from the training speed."""
    return val_images * EVAL_SECONDS_PER_IMAGE_PER_ITER_SECOND * seconds_per_iter + FIGURE_SECONDS


def fit_iterations(planned: int, seconds_per_iter: float, seconds_left: float, val_images: int) -> int:
    """The iterations of a schedule of ``planned`` that fit in ``seconds_left`` with the evaluation of
    ``val_images`` images and the figure after them, rounded down to a multiple of 50 (where 50 fit);
    ``planned`` where they all fit, 0 where none does. (The timing varies by a few percent with the host's
    load, and so can the schedule it picks: ``--iters N`` repeats a run exactly.)
    """
    seconds_for_training = seconds_left - seconds_after_training(seconds_per_iter, val_images)
    fitting = max(int(seconds_for_training // seconds_per_iter), 0)
    if fitting >= planned:
        return planned
    return fitting // 50 * 50 if fitting >= 50 else fitting


def planning_deadline(started: float, budget_seconds: float) -> float:
    """When a budgeted job planned from ``started`` should be done: its budget less the margin kept back."""
    return started + budget_seconds * (1 - BUDGET_MARGIN)


def fit_to_budget(cfg, args, started: float, val_images: int) -> tuple:
    """The seconds an iteration of ``cfg`` takes here and the iterations of its schedule that fit
    ``args.time_budget`` minutes from ``started``; a clear exit where none does."""
    print(f'[main_job] timing a few training iterations to fit the {args.time_budget:g}-minute budget', flush=True)
    seconds_per_iter = measure_seconds_per_iter(cfg)
    seconds_left = planning_deadline(started, 60 * args.time_budget) - time.time()
    iters = fit_iterations(cfg.train_cfg.max_iters, seconds_per_iter, seconds_left, val_images)
    if iters == 0:
        raise SystemExit(f'error: the {args.time_budget:g}-minute --time-budget leaves no time to train here: '
                         f'{time.time() - started:.0f} s went to the data and the timing, an iteration takes '
                         f'{seconds_per_iter:.2f} s and the evaluation and the figure about '
                         f'{seconds_after_training(seconds_per_iter, val_images):.0f} s; raise --time-budget, or '
                         f'pass --iters N to train N iterations whatever they take')
    return seconds_per_iter, iters


class KeepToBudgetHook(Hook):
    """Keeps a budgeted run to its time budget as it trains, from the run's own speed.

    :func:`fit_to_budget` first fits the schedule to the budget from a timing of a few iterations, which a
    busy or a quiet stretch of a shared host makes slower or faster than the run then trains (the AVX2 host
    once timed 1.30 s/iter, trained at 0.99 and ended 6.8 minutes inside its budget). Every ``interval``
    iterations, once every learning-rate scheduler has begun (after the warm-up), the median time of the
    last ``window`` iterations forecasts the rest, the evaluation and the figure included: where the run
    would end past the budget, it is shortened to end inside the budget less its margin; where ``min_gain``
    more iterations fit inside that, it is lengthened, up to the config's schedule. Between the two the
    length stays, so that the timing's noise does not move it back and forth. A lengthening must also fit at
    the median time of all the run's iterations so far: a run lengthened to what fits a fast stretch ends at
    the edge of the budget less its margin, and an AVX2 host's speed alternated between stretches of about
    0.72 and 0.83 s/iter (the medians of 100), wider apart than the margin, so that a run re-fitted to the
    last stretch alone went from 1300 iterations to 1400 and back twice (:meth:`refit`).

    The schedulers that end with the run (the cosine decay) end with it still: mmengine's are chainable,
    each step scaling the rate it finds, so the rate goes on from where it is along the new length's cosine
    and reaches its minimum at the new end. The rate's raise for a short run (``short_schedule_lr_scale``)
    stays as first planned. A run whose schedulers ending with it have no ``T_max`` (a shape other than
    the cosine) keeps its first plan, and its log says so.

    Args:
        planned (int): The config's iterations, the most a run is lengthened to.
        started (float): When the job started (``time.time()``); the budget counts from it.
        budget_seconds (float): The time budget.
        val_images (int): Images the evaluation after training runs on.
        interval, window, min_gain (int): See above.
        clock (callable): The time now in seconds (``time.time``; tests pass their own).
    """
    # After IterTimerHook ('NORMAL') has recorded the iteration's time, before the schedulers ('LOW') step.
    priority = 'BELOW_NORMAL'

    def __init__(self, planned: int, started: float, budget_seconds: float, val_images: int,
                 interval: int = REFIT_INTERVAL, window: int = REFIT_WINDOW, min_gain: int = REFIT_MIN_GAIN,
                 clock=time.time) -> None:
        self.planned, self.started, self.budget_seconds, self.val_images = planned, started, budget_seconds, val_images
        self.interval, self.window, self.min_gain, self.clock = interval, window, min_gain, clock
        self.schedulers = None  # the run's, once it starts; None where its length cannot be re-fitted
        self.refits = []  # each change of length, for the report

    def before_train(self, runner) -> None:
        schedulers = runner.param_schedulers
        if isinstance(schedulers, dict):  # one list per optimizer
            unfit = ['schedulers of several optimizers']
        else:
            unfit = [type(s).__name__ for s in schedulers if s.end >= runner.max_iters and not hasattr(s, 'T_max')]
        if unfit:
            runner.logger.info(f'[main_job] the run keeps its {runner.max_iters} iterations whatever its speed: its '
                               f'{", ".join(unfit)} cannot be re-fitted to another length as it trains')
        self.schedulers = None if unfit else list(schedulers)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        done, length = runner.iter + 1, runner.max_iters
        if (self.schedulers is None or done % self.interval or done >= length
                or any(s.begin > done for s in self.schedulers)):
            return
        times = runner.message_hub.get_scalar('train/time').data[0]
        iterations, seconds_per_iter = self.refit(done, length, times, self.clock())
        if iterations != length:
            self.set_length(runner, iterations)
            self.refits.append(dict(iteration=done, seconds_per_iter=seconds_per_iter, iterations=iterations))
            runner.logger.info(
                f'[main_job] iteration {done}: training at {seconds_per_iter:.3f} s/iter (the '
                f'{"slower of the medians" if iterations > length else "median"} of the last {min(self.window, done)}'
                f'{f" and of all {done}" if iterations > length else ""}), '
                f'{"only " if iterations < length else ""}{iterations} iterations fit the '
                f'{self.budget_seconds / 60:g}-minute budget: the run now ends at {iterations} instead of {length}, '
                f'its learning-rate decay with it')

    def refit(self, done: int, length: int, times: np.ndarray, now: float) -> Tuple[int, float]:
        """The length for a run of ``length`` iterations after ``done`` of them, whose times in seconds were
        ``times`` (all of the run's so far, the last ``done`` at least), at the time ``now``.

        Returns the new length (``length`` where it stays) and the seconds per iteration it was fitted at:
        the median of the last ``window`` times, or for a lengthening the slower of that and the median of
        all the times.
        """
        recent = float(np.median(times[-self.window:]))
        within_margin = planning_deadline(self.started, self.budget_seconds)

        def fitting(seconds_per_iter: float, deadline: float) -> int:
            return done + fit_iterations(self.planned - done, seconds_per_iter, deadline - now, self.val_images)

        if length > fitting(recent, self.started + self.budget_seconds):
            return fitting(recent, within_margin), recent
        typical = max(recent, float(np.median(times)))
        longer = fitting(typical, within_margin)
        return (longer, typical) if longer >= length + self.min_gain else (length, recent)

    def set_length(self, runner, iterations: int) -> None:
        """End the run after ``iterations`` (the current iteration included, at least): the loop, the
        schedulers that end with it and a checkpoint interval of the run's length."""
        length = runner.max_iters
        runner.train_loop._max_iters = iterations  # (no setter; IterBasedTrainLoop reads it at every iteration)
        for scheduler in self.schedulers:
            if scheduler.end >= length:
                scheduler.end = iterations
                scheduler.T_max = iterations - scheduler.begin
        for hook in runner.hooks:
            if isinstance(hook, CheckpointHook) and hook.interval == length:
                hook.interval = iterations


def plan_schedule(cfg, args, started: float, val_images: int) -> dict:
    """Set the length of ``cfg``'s run in place: ``--iters``, else the config's schedule where it fits the
    time budget, else as much of it as fits (``fit_to_budget``). The learning-rate schedule keeps its shape
    (``set_iterations``), and a run cut short trains at a higher rate (``short_schedule_lr_scale``). Returns
    what was planned, measured and chosen, for the report."""
    from projects.acouplenet.runtime import set_iterations, short_schedule_lr_scale
    planned = cfg.train_cfg.max_iters
    budgeted = args.iters is None and args.time_budget > 0
    schedule = dict(time_budget_minutes=args.time_budget if budgeted else None, planned_iterations=planned,
                    timed_seconds_per_iter=None)
    if budgeted:
        schedule['timed_seconds_per_iter'], iters = fit_to_budget(cfg, args, started, val_images)
    else:
        iters = planned if args.iters is None else args.iters
    schedule['learning_rate_scale'] = short_schedule_lr_scale(planned, iters)
    set_iterations(cfg, iters)
    cfg.optim_wrapper.optimizer.lr *= schedule['learning_rate_scale']
    if not budgeted:
        return schedule
    seconds_per_iter = schedule['timed_seconds_per_iter']
    if iters == planned:
        print(f'[main_job] {seconds_per_iter:.3f} s/iter: the config\'s {planned} iterations fit the budget',
              flush=True)
        return schedule
    print(f'[main_job] {seconds_per_iter:.3f} s/iter here: the config\'s {planned} iterations would take '
          f'{planned * seconds_per_iter / 60:.0f} minutes, over the {args.time_budget:g}-minute budget; training '
          f'{iters} iterations instead, the learning-rate schedule scaled alike and its rate raised '
          f'x{schedule["learning_rate_scale"]:.2f} (--iters {planned} trains them all, --time-budget to change the '
          f'budget)', flush=True)
    if iters < planned / 4:
        print(f'[main_job] warning: {iters} of {planned} iterations are too few to learn much: expect an AP near '
              f'zero, unless the run trains faster than timed and lengthens itself', flush=True)
    return schedule


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


def schedule_lines(report: dict) -> list:
    """The report's line on how the schedule met the time budget (none where no budget applied)."""
    if report['time_budget_minutes'] is None:
        return []
    planned, timed = report['planned_iterations'], report['timed_seconds_per_iter']
    refits = ''.join(f'; re-fitted to {refit["iterations"]} at iteration {refit["iteration"]}, training at '
                     f'{refit["seconds_per_iter"]:.3f} s/iter' for refit in report.get('refits', []))
    if report['iterations'] == planned:
        return [f'- schedule: the config\'s {planned} iterations (timed at {timed:.3f} s/iter here{refits}: they fit '
                f'the {report["time_budget_minutes"]:g}-minute budget)']
    return [f'- schedule: **{report["iterations"]} of the config\'s {planned} iterations**, to fit the '
            f'{report["time_budget_minutes"]:g}-minute budget (timed at {timed:.3f} s/iter here{refits}); '
            f'`--iters {planned}` trains them all']


def learning_rate_note(report: dict) -> str:
    """What the report's training line says of a learning rate raised for a shortened schedule."""
    scale = report['learning_rate_scale']
    return '' if scale == 1 else (f' (the config\'s x {scale:.2f}, as the run is shorter than its '
                                  f'{report["planned_iterations"]} iterations)')


def write_report(work_dir: str, report: dict) -> None:
    """``report.json`` and ``report.md``, each written to a temporary file and renamed."""
    from projects.acouplenet.fileio import atomic_write
    from projects.acouplenet.runtime import cpu_name
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
        f'seed {report["seed"]}, learning rate {report["learning_rate"]:.3g}' + learning_rate_note(report),
        f'- host: {cpu_name(report["host"])}, {report["host"]["threads"]} threads, torch {report["host"]["torch"]}',
        *schedule_lines(report),
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

    val_images = manifest['splits']['val']['images']
    schedule = plan_schedule(cfg, args, started, val_images)
    runner = Runner.from_cfg(cfg)
    keep_to_budget = None
    if schedule['time_budget_minutes'] is not None:
        keep_to_budget = KeepToBudgetHook(schedule['planned_iterations'], started, 60 * args.time_budget, val_images)
        runner.register_hook(keep_to_budget)
    t0 = time.time()
    runner.train()
    train_seconds = time.time() - t0
    iterations = runner.iter  # (the planned ones, or as many as the run re-fitted itself to)
    t0 = time.time()
    metrics = runner.test()
    eval_seconds = time.time() - t0
    checkpoint = osp.join(cfg.work_dir, f'iter_{iterations}.pth')

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
        iterations=iterations,
        **schedule,
        refits=keep_to_budget.refits if keep_to_budget else [],
        learning_rate=cfg.optim_wrapper.optimizer.lr,
        batch_size=cfg.train_dataloader.batch_size,
        train_seconds=train_seconds,
        seconds_per_iter=train_seconds / iterations,
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
