# Base of the attention ablation (paper Table V): ACoupleNet with attention after conv2, conv3 and conv4,
# trained on COCO val35k (valminusminival2014) and evaluated on minival2014: 4 GPUs x 2 images,
# 12 epochs, lr 0.001 divided by 10 after epoch 10, single scale with flips.
_base_ = [
    '../../_base_/models/acouplenet_r101.py', '../../_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py', '../../_base_/default_runtime.py'
]
train_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_valminusminival2014.json', data_prefix=dict(img='val2014/')))
val_dataloader = dict(
    dataset=dict(ann_file='annotations/instances_minival2014.json', data_prefix=dict(img='val2014/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='data/coco/annotations/instances_minival2014.json')
test_evaluator = val_evaluator
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[10], gamma=0.1)
]
optim_wrapper = dict(optimizer=dict(lr=0.001, momentum=0.9, weight_decay=0.0005))
auto_scale_lr = dict(base_batch_size=8)
