"""Adjustments of a loaded config: to the machine it runs on (tools/train.py, tools/test.py) and to a
data folder and run length (the main job, the benchmarks, the tests); the tools' argument types and output
folders, checked before they start, and their tables of metrics; the machine's description that reports record."""
import argparse
import copy
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config


class AmpUnavailableError(RuntimeError):
    pass


def prepare_cfg(cfg: Config, amp: bool = False) -> Config:
    """Make ``cfg`` runnable here, in place.

    * Without CUDA, distributed runs use the gloo backend (NCCL needs GPUs)
      and DDP wraps the model without device ids (mmengine passes the local
      rank as a CUDA device); see also :func:`init_cpu_distributed`.
    * ``amp``: mmengine's ``AmpOptimWrapper`` (a ``torch.cuda.amp`` grad scaler)
      when CUDA is available; on a CPU-only machine a clear error instead of
      mmengine's bare assertion.
    * The runner gets a visualizer of its own (see :func:`own_visualizer`).
    """
    own_visualizer(cfg)
    if not torch.cuda.is_available():
        env_cfg = cfg.setdefault('env_cfg', {})
        dist_cfg = env_cfg.setdefault('dist_cfg', {})
        if dist_cfg.get('backend', 'nccl') == 'nccl':
            dist_cfg['backend'] = 'gloo'
        if cfg.get('launcher', 'none') != 'none' and cfg.get('model_wrapper_cfg') is None:
            cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                         find_unused_parameters=cfg.get('find_unused_parameters', False))
    if amp:
        if not torch.cuda.is_available():
            raise AmpUnavailableError(
                '--amp needs a CUDA GPU: mmengine\'s AmpOptimWrapper scales fp16 gradients with '
                'torch.cuda.amp and has no CPU path, and mmcv\'s CPU ops (NMS, RoI layers) take fp32 only. '
                'Drop --amp to train in fp32 on the CPU, or run on a GPU.')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    return cfg


def own_visualizer(cfg: Config) -> Config:
    """Rename ``cfg.visualizer`` where this process already holds a visualizer of that name, in place.

    mmdet's configs name theirs ``'visualizer'``, and mmengine's ``get_instance``
    hands a later runner the instance made first in the process (by a
    ``DetInferencer``, or an earlier run in a notebook or test) with that one's
    vis backends and save dir: the new run's ``vis_data/scalars.json`` went to
    the other run's folder, or nowhere. A new name builds a new instance that
    writes into this run's log dir; ``Visualizer.get_current_instance()``, which
    the hooks use, then returns it.
    """
    vis = cfg.get('visualizer')
    if not isinstance(vis, dict) or 'type' not in vis:
        return cfg
    from mmdet.registry import VISUALIZERS
    # Each visualizer class keeps its own instances: ask the class the config builds.
    vis_cls = vis['type'] if isinstance(vis['type'], type) else VISUALIZERS.get(vis['type'])
    name = vis.get('name')
    if vis_cls is None or name is None or not vis_cls.check_instance_created(name):
        return cfg
    suffix = 1
    while vis_cls.check_instance_created(f'{name}-{suffix}'):
        suffix += 1
    vis['name'] = f'{name}-{suffix}'
    return cfg


def inner_dataset_cfg(dataset: dict) -> dict:
    """The dataset config inside wrappers (``RepeatDataset``, ``ClassBalancedDataset``, ...): the one that
    has the annotation file, data root and pipeline."""
    while 'dataset' in dataset:
        dataset = dataset['dataset']
    return dataset


def apply_tta(cfg: Config) -> Config:
    """Test with test-time augmentation (``tools/test.py --tta``), in place, as mmdet's ``tools/test.py``.

    The config's own ``tta_model`` and ``tta_pipeline`` are used when it has
    them (the project's configs have the ``UnflippedViewTTAModel`` of
    ``_base_/default_runtime.py``); otherwise mmdet's defaults: each image
    tested as it is and flipped horizontally, the two detection sets merged by
    NMS at IoU 0.5, 100 kept, but with the flip before the annotations load
    (see below) and the merged detections on the unflipped view's sample.
    The paper reports single-scale, unflipped testing (Sec. IV-A): TTA is a
    user's option, not part of the method.
    """
    if 'tta_model' not in cfg:
        cfg.tta_model = dict(type='UnflippedViewTTAModel')
    # The TTA pipeline goes to the dataset that has the pipeline (mmdet's test.py sets it on the outer dict,
    # which a wrapper does not accept).
    dataset = inner_dataset_cfg(cfg.test_dataloader.dataset)
    if 'tta_pipeline' not in cfg:
        pipeline = copy.deepcopy(dataset.pipeline)
        if not pipeline or pipeline[-1].get('type') not in ('PackDetInputs', 'mmdet.PackDetInputs'):
            raise ValueError('--tta without a tta_pipeline in the config packs flipped and unflipped copies with '
                             'the test pipeline\'s last step, PackDetInputs; this test pipeline ends with '
                             f'{pipeline[-1].get("type") if pipeline else "nothing"}. Add a tta_pipeline to the '
                             'config (see mmdet\'s configs/retinanet/retinanet_tta.py)')
        meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction')
        # The flip goes before the annotations are loaded: a test pipeline loads them after Resize, in the
        # original image's frame, and so each view carries them there (--branches flips them with the view,
        # coupled_roi_head.input_gts); RandomFlip after them would flip them about the resized image's width.
        flip_at = next((i for i, step in enumerate(pipeline)
                        if step.get('type') in ('LoadAnnotations', 'mmdet.LoadAnnotations')), len(pipeline) - 1)
        pipeline[flip_at:] = [dict(type='TestTimeAug',
                                   transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                                               *([step] for step in pipeline[flip_at:-1]),
                                               [dict(type='PackDetInputs', meta_keys=meta_keys)]])]
        cfg.tta_pipeline = pipeline
    cfg.model = dict(**cfg.tta_model, module=cfg.model)
    dataset.pipeline = cfg.tta_pipeline
    return cfg


def device_arg(value: str) -> str:
    """``--device`` of the tools (an argparse ``type``): ``cpu``, ``cuda`` or ``cuda:N`` that this machine has.

    Without it, ``--device cuda`` on a CPU-only machine fails deep in model
    loading with torch's "Found no NVIDIA driver".
    """
    try:
        device = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f'{value!r} is not a device: pass cpu, cuda or cuda:N') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f'{value}: CUDA is not available here (torch {torch.__version__}, '
                                             f'no usable GPU or driver); pass --device cpu')
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f'{value}: this machine has {count} CUDA device(s), cuda:0 to '
                                             f'cuda:{count - 1}')
    elif device.type != 'cpu':
        raise argparse.ArgumentTypeError(f'{value}: the tools run on cpu or cuda[:N], not {device.type}')
    return value


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{value!r} is not an integer') from None


def count_arg(least: int = 1):
    """An argparse ``type`` for a count of the tools (iterations, images, runs): an integer of at least ``least``.

    A count below it is refused at parsing rather than taken for "the default"
    (``--iters 0`` once trained the config's 2000 iterations).
    """
    def parse(value: str) -> int:
        count = _integer(value)
        if count < least:
            raise argparse.ArgumentTypeError(f'must be at least {least}, got {count}')
        return count

    parse.__name__ = f'integer of at least {least}'  # how argparse names the type in its own messages
    return parse


def seed_arg(value: str) -> int:
    """A ``--seed`` of the tools (an argparse ``type``): numpy, which mmengine seeds, takes 0 to 2**32 - 1."""
    seed = _integer(value)
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f'{seed} is out of range: seeds run from 0 to 2**32 - 1 (numpy\'s)')
    return seed


def folder_arg_or_exit(path: str, option: str) -> str:
    """A tool's output folder ``path``, made absolute, checked before the tool does any work (nothing is
    created): where a file is in the way or the folder is not writable, the tool exits with an error naming
    ``option`` and the fix."""
    from .fileio import check_output_folder
    try:
        return check_output_folder(path, option)
    except ValueError as exc:
        raise SystemExit(f'error: {exc}') from None


def set_work_dir(cfg: Config, work_dir: Optional[str], config: str) -> str:
    """``cfg.work_dir`` as mmdet's tools set it, checked (:func:`folder_arg_or_exit`): ``work_dir`` (the
    command line's) over the config's over ``./work_dirs/<config file name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    folder_arg_or_exit(cfg.work_dir, 'work_dir')
    return cfg.work_dir


def init_cpu_distributed(launcher: str) -> None:
    """Start the gloo process group of a CPU-only distributed run.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` before it starts
    the process group, which fails on a machine without a GPU. Started here,
    the group is reused by the runner (it only initialises when none exists).
    """
    import torch.distributed as dist
    if launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return
    if launcher != 'pytorch':
        raise RuntimeError(f'--launcher {launcher} on a machine without CUDA: CPU-only distributed runs support '
                           f'--launcher pytorch (tools/dist_train.sh, torchrun)')
    dist.init_process_group(backend='gloo')


def set_coco_data_root(cfg: Config, root: str) -> Config:
    """Point every dataloader and COCO evaluator of ``cfg`` at ``root``, in place."""
    root = osp.abspath(root) + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader):
            dataset = cfg[loader].dataset
            for part in dataset.get('datasets', [dataset]):  # a ConcatDataset's parts, or the dataset itself
                inner_dataset_cfg(part)['data_root'] = root
    for evaluator in ('val_evaluator', 'test_evaluator'):
        if cfg.get(evaluator) and 'ann_file' in cfg[evaluator]:
            cfg[evaluator].ann_file = osp.join(root, osp.relpath(cfg[evaluator].ann_file, cfg.data_root))
    return cfg


def set_iterations(cfg: Config, iters: int) -> Config:
    """Change the length of an iteration-based run to ``iters``, in place.

    The learning-rate schedule keeps its shape: every iteration-based
    scheduler's begin, end, ``T_max`` and milestones scale with the run.
    Checkpointing and evaluation happen once, at the end.
    """
    if cfg.train_cfg.get('type') != 'IterBasedTrainLoop':
        raise ValueError(f'set_iterations needs an IterBasedTrainLoop config, got {cfg.train_cfg.get("type")}')
    if iters < 1:
        raise ValueError(f'iters={iters} must be >= 1')
    scale = iters / cfg.train_cfg.max_iters
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    for scheduler in cfg.param_scheduler:
        if scheduler.get('by_epoch', True):
            continue
        scheduler['begin'] = min(round(scheduler.get('begin', 0) * scale), iters - 1)
        scheduler['end'] = max(min(round(scheduler.get('end', iters / scale) * scale), iters), scheduler['begin'] + 1)
        if 'T_max' in scheduler:
            scheduler['T_max'] = scheduler['end'] - scheduler['begin']
        if 'milestones' in scheduler:
            scheduler['milestones'] = [max(round(m * scale), 1) for m in scheduler['milestones']]
    cfg.default_hooks.checkpoint.interval = iters
    return cfg


# A schedule cut short trains at a higher learning rate: AdamW's steps are about the learning rate in size
# whatever the gradient's, so a run of half the iterations moves the weights only about half as far. Raising
# the rate by the factor the run is cut by, up to twice the configured one, gives that distance back. On the
# AVX2-only host the main job's 1050 of 2000 iterations reached 13.2 AP at the config's 1e-3, 20.0 at 2e-3
# and 20.3 at 3e-3; 900 iterations 9.6 and 10.4 AP at 1e-3 and 2e-3, 800 7.4 and 8.7, 700 7.1 and 9.2
# (2026-12-05 and 06, one training seed). The whole 2000 at 2e-3 gained too for ACoupleNet (+2.8 and +3.2 AP
# at training seeds 0 and 1), so part of these gains is its rate being low at any length, not the shorter run;
# the baselines' whole schedules moved either way (docs/shapes_experiments.md, "The main job's runs"). The cap
# keeps the raised rate within what was measured.
MAX_SHORT_SCHEDULE_LR_SCALE = 2.0


def short_schedule_lr_scale(planned: int, iters: int) -> float:
    """The factor on the learning rate of a run of ``iters`` iterations of a schedule of ``planned``:
    ``planned / iters`` where that cuts it short, at most ``MAX_SHORT_SCHEDULE_LR_SCALE``, and 1 for the
    whole schedule or a longer one."""
    return min(max(planned / iters, 1.0), MAX_SHORT_SCHEDULE_LR_SCALE)


def metrics_table(rows: dict, corner: str = '') -> str:
    """Markdown: one row per name of ``rows`` ({name: an evaluator's metrics}), one column per numeric metric,
    in percent; ``corner`` heads the names' column."""
    keys = [k for k, v in next(iter(rows.values())).items() if isinstance(v, (int, float))]
    short = [k.split('/')[-1].replace('bbox_', '') for k in keys]
    lines = [(f'| {corner} | ' if corner else '| | ') + ' | '.join(short) + ' |', '|---|' + '---|' * len(keys)]
    # (COCO's -1: no object of that size in the test set)
    lines += [f'| {name} | ' + ' | '.join(f'{100 * metrics[k]:.1f}' if metrics[k] >= 0 else '-' for k in keys) + ' |'
              for name, metrics in rows.items()]
    return '\n'.join(lines)


def host_info() -> dict:
    """What the numbers depend on besides the code, the data and the seed: the CPU and the kernels torch
    picks for it (their rounding differs between CPU types, and training from scratch amplifies it), and
    the threads. ``cpu_id`` tells apart CPUs of one name ('AMD EPYC' of family 23 and 25 trained at 0.95 and
    0.77 s/iter, both with AVX2 only); None where ``/proc/cpuinfo`` does not say."""
    import platform

    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    family, model = fields.get('cpu family'), fields.get('model')
    return dict(cpu=fields.get('model name') or platform.processor() or platform.machine(),
                cpu_id=f'family {family}, model {model}' if family and model else None,
                cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads(),
                torch=torch.__version__)


def cpu_name(host: dict) -> str:
    """:func:`host_info`'s CPU in words, e.g. 'AMD EPYC, family 25, model 1 (AVX2)' (reports before
    ``cpu_id`` existed: without it)."""
    cpu_id = host.get('cpu_id')
    return f'{host["cpu"]}{", " + cpu_id if cpu_id else ""} ({host["cpu_capability"]})'
