# COCO with instance masks (attention targets), single-scale 600/1000 training and testing with flips
# only, as in the paper's attention ablation (Table V); box AP only.
_base_ = 'mmdet::_base_/datasets/coco_instance.py'

train_pipeline = [
    # mmdet's own loading steps (its analyze_results tool looks for them); the dataset skips bad images
    # and gives objects without masks their boxes as masks (CheckedDatasetMixin).
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1000, 600), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(1000, 600), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# CheckedCocoDataset: mmdet's CocoDataset that logs the annotations it drops.
train_dataloader = dict(dataset=dict(type='CheckedCocoDataset', pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type='CheckedCocoDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric='bbox')
test_evaluator = val_evaluator
