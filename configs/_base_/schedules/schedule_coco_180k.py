# ACoupleNet on COCO (paper Sec. IV-D): SGD, 16 images per batch, lr 0.001 for 150k iterations, then
# 0.0001 for 30k; momentum 0.9, weight decay 0.0005. Iteration-based, so it also sets the runtime's
# checkpointing and logging to iterations: leaf configs list it instead of default_runtime.py.
_base_ = '../default_runtime.py'

train_cfg = dict(type='IterBasedTrainLoop', max_iters=180000, val_interval=30000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=180000, by_epoch=False, milestones=[150000], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=0.001, momentum=0.9, weight_decay=0.0005))
auto_scale_lr = dict(enable=False, base_batch_size=16)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000, max_keep_ckpts=3))
log_processor = dict(by_epoch=False)
