"""Training hooks: exact resumption and a guard against non-finite losses."""
import math
import random
from typing import List, Optional, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmdet.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the random number generators with each checkpoint and restore them on resume.

    mmengine restores weights, optimizer, schedulers and the data order, but
    not the generators that the RPN and RoI samplers (and dropout) draw from,
    so a resumed run drifts from the uninterrupted one. With this hook the
    model's random stream continues where it stopped: with a data pipeline
    that draws no random numbers, the resumed run ends with the same weights.
    Random augmentations still differ after a resume: mmengine's loop reloads
    the finished iterations' batches to find its place in the data order, and
    data workers re-seed themselves when they start.

    The state is applied before the first iteration after resuming, i.e. after
    that replay. The states are tensors, ints and one numpy array, all
    loadable under ``weights_only``.
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        np_state = np.random.get_state()
        checkpoint.setdefault('meta', {})['rng_state'] = dict(
            torch=torch.get_rng_state(),
            cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            numpy=dict(name=np_state[0], keys=np_state[1], pos=int(np_state[2]), has_gauss=int(np_state[3]),
                       cached_gaussian=float(np_state[4])),
            python=list(random.getstate()[1]),
            python_version=random.getstate()[0],
        )

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get('meta', {}).get('rng_state')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._pending is not None:
            state, self._pending = self._pending, None
            self._restore(state)

    @staticmethod
    def _restore(state: dict) -> None:
        torch.set_rng_state(state['torch'])
        if state['cuda'] and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state['cuda'])
        n = state['numpy']
        np.random.set_state((n['name'], n['keys'], n['pos'], n['has_gauss'], n['cached_gaussian']))
        random.setstate((state['python_version'], tuple(state['python']), None))


class NonFiniteLossError(RuntimeError):
    pass


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training at the first NaN or Inf loss, before it reaches a checkpoint or another iteration.

    Checks the parsed losses of each iteration (mmengine's ``after_train_iter``
    sees them in ``outputs``, after that iteration's optimizer step, which the
    non-finite gradients may already have spoilt: the weights in memory are
    not to be trusted). The hook runs before ``CheckpointHook`` (priority
    ABOVE_NORMAL against VERY_LOW), so the run stops with an error that names
    the iteration, the offending loss terms and the last checkpoint, which
    stays as it was: resume from it.

    Args:
        check_interval (int): Check every n iterations.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, check_interval: int = 1) -> None:
        self.check_interval = check_interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs: Optional[dict] = None) -> None:
        if outputs is None or not self.every_n_train_iters(runner, self.check_interval):
            return
        values = {k: float(v.detach()) if isinstance(v, torch.Tensor) else v for k, v in outputs.items()
                  if 'loss' in k and isinstance(v, (torch.Tensor, float))}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            last = runner.message_hub.get_info('last_ckpt')
            message = (f'non-finite loss at iteration {runner.iter + 1}: '
                       + ', '.join(f'{k}={v}' for k, v in sorted(bad.items()))
                       + f'. Training stopped; the last checkpoint ({last or "none saved yet"}) is untouched. '
                       f'Lower the learning rate, enable gradient clipping (optim_wrapper.clip_grad) or check '
                       f'the data of this batch, then resume with --resume.')
            print_log(message, logger='current', level=40)
            raise NonFiniteLossError(message)


def class_count_mismatches(model: torch.nn.Module, num_names: int) -> List[Tuple[str, torch.nn.Module]]:
    """``(name, module)`` of every head whose ``num_classes`` is not ``num_names`` (the class-agnostic RPN aside)."""
    return [(name, module) for name, module in model.named_modules()
            if not name.endswith('rpn_head') and isinstance(getattr(module, 'num_classes', None), int)
            and module.num_classes != num_names]


@HOOKS.register_module()
class ClassCountCheckHook(Hook):
    """Check every head's ``num_classes`` against the dataset's classes, before training, validation and
    testing (mmdet's ``NumClassCheckHook`` skips testing and fails with a bare assertion)."""

    priority = 'VERY_HIGH'

    @staticmethod
    def _check(runner, dataset, mode: str) -> None:
        classes = dataset.metainfo.get('classes')
        if not classes:
            print_log(f'ClassCountCheckHook: the {mode} dataset {type(dataset).__name__} has no metainfo classes; '
                      f'cannot check the heads\' num_classes', logger='current', level=30)
            return
        if isinstance(classes, str):
            raise ValueError(f'metainfo classes of the {mode} dataset is the string {classes!r}; write a tuple, '
                             f'e.g. classes=({classes!r}, )')
        mismatched = class_count_mismatches(runner.model, len(classes))
        if mismatched:
            name, module = mismatched[0]
            raise ValueError(f'{name} ({type(module).__name__}) has num_classes={module.num_classes}, but the '
                             f'{mode} dataset {type(dataset).__name__} has {len(classes)} classes '
                             f'{tuple(classes)}. Set model.roi_head.bbox_head.num_classes={len(classes)}, or '
                             f'give the dataset the classes the model was built for (metainfo=dict(classes=...))')

    def before_train_epoch(self, runner) -> None:
        self._check(runner, runner.train_dataloader.dataset, 'train')

    def before_val_epoch(self, runner) -> None:
        self._check(runner, runner.val_dataloader.dataset, 'val')

    def before_test_epoch(self, runner) -> None:
        self._check(runner, runner.test_dataloader.dataset, 'test')
