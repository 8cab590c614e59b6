"""A hook for the DDP test, imported by its config through custom_imports (so it must live in a module)."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmdet.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    """Writes each rank's weights before and after training, to compare the ranks afterwards."""

    def _save(self, runner, name):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, osp.join(runner.work_dir, name))

    def before_train(self, runner):
        if get_rank() == 0:
            self._save(runner, 'rank0_initial_weights.pth')

    def after_train(self, runner):
        self._save(runner, f'rank{get_rank()}_weights.pth')
