# The generated "shapes" dataset (projects/acouplenet/shapes.py; `python tools/generate_shapes.py`):
# COCO format with RLE instance masks, images resized to fit 256 x 256 (their generated size), box AP on val.
dataset_type = 'CheckedCocoDataset'  # mmdet's CocoDataset that logs the annotations it drops
data_root = 'data/shapes/'
metainfo = dict(
    classes=('face-ellipse', 'face-star', 'face-triangle', 'cross-ellipse', 'cross-star', 'cross-triangle'),
    palette=[(220, 20, 60), (119, 11, 32), (0, 0, 142), (0, 182, 199), (250, 170, 30), (106, 0, 228)])
backend_args = None

train_pipeline = [
    # mmdet's own loading steps (its analyze_results tool looks for them); the dataset skips bad images
    # and gives objects without masks their boxes as masks (CheckedDatasetMixin).
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        # Images without objects stay: they teach the attention maps an all-background target.
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/instances_val.json', metric='bbox',
                     format_only=False, backend_args=backend_args)
test_evaluator = val_evaluator
