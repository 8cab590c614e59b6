# CoupleNet (no attention), ResNet-101, COCO, as in the paper's Table IX (34.4 AP on test-dev with
# multi-scale training): 4 GPUs x 1 image, lr 0.001 for 510k iterations, then 0.0001 for 70k.
_base_ = [
    '../_base_/models/couplenet_r101.py', '../_base_/datasets/coco_instance_ms.py',
    '../_base_/schedules/schedule_coco_180k.py'
]
train_dataloader = dict(batch_size=1)
train_cfg = dict(max_iters=580000, val_interval=50000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=580000, by_epoch=False, milestones=[510000], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=4)
