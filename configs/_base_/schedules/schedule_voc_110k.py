# CoupleNet / ACoupleNet on VOC07+12 (paper Sec. IV-B): one GPU, 2 images per iteration, lr 0.001 for
# 80k iterations, then 0.0001 for 30k; momentum 0.9, weight decay 0.0005.
_base_ = './schedule_coco_180k.py'  # SGD and iteration-based runtime

train_cfg = dict(max_iters=110000, val_interval=10000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=110000, by_epoch=False, milestones=[80000], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=2)
