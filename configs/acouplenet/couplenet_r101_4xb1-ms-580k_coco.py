# CoupleNet (no attention), ResNet-101, COCO, as in the paper's Table IX (34.4 AP on test-dev with
# multi-scale training): 4 GPUs x 1 image, lr 0.001 for 510k iterations, then 0.0001 for 70k.
_base_ = [
    '../_base_/models/couplenet_r101.py', '../_base_/datasets/coco_trainval_ms.py',
    '../_base_/schedules/schedule_coco_180k.py'
]
train_dataloader = dict(batch_size=1)
train_cfg = dict(max_iters=580000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=580000, by_epoch=False, milestones=[510000], gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=4)
# val2017 is training data here: no validation during training. `tools/test.py` writes the test-dev
# detections to <outfile_prefix>.bbox.json; the evaluation server wants it renamed to .json and zipped.
val_dataloader = val_evaluator = val_cfg = None
test_evaluator = dict(
    outfile_prefix='./work_dirs/couplenet_r101_4xb1-ms-580k_coco/detections_test-dev2017_couplenet_results')
