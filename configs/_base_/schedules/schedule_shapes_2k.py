# The CPU schedule of the shapes configs: 2k iterations, SGD with linear warm-up and cosine decay,
# gradient clipping (training from scratch), one evaluation at the end.
_base_ = '../default_runtime.py'

max_iters = 2000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=200),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=200, end=max_iters, T_max=max_iters - 200, eta_min=1e-4)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=50)
randomness = dict(seed=0)
