# PASCAL VOC 07+12 trainval with SBD instance masks where SBD has the image ("07+12+S"; boxes stand in
# for the other objects' masks), single-scale 600/1000 as in the paper's ablations, VOC07 test with
# 11-point mAP. Create data/VOCdevkit/SBD/sbd_instances.json with tools/dataset_converters/sbd_to_masks.py.
_base_ = 'mmdet::_base_/datasets/voc0712.py'

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
voc07 = dict(
    type='VOCSBDDataset',
    data_root={{_base_.data_root}},
    ann_file='VOC2007/ImageSets/Main/trainval.txt',
    data_prefix=dict(sub_data_root='VOC2007/'),
    sbd_ann_file='SBD/sbd_instances.json',
    filter_cfg=dict(filter_empty_gt=True, min_size=32, bbox_min_size=32),
    pipeline=train_pipeline,
    backend_args={{_base_.backend_args}})
voc12 = dict(voc07, ann_file='VOC2012/ImageSets/Main/trainval.txt', data_prefix=dict(sub_data_root='VOC2012/'))
train_dataloader = dict(
    batch_size=2,
    dataset=dict(_delete_=True, type='ConcatDataset', ignore_keys=['dataset_type'], datasets=[voc07, voc12]))
# VOCSBDDataset without SBD is mmdet's VOCDataset that names a bad test image (CheckedDatasetMixin).
val_dataloader = dict(dataset=dict(type='VOCSBDDataset', pipeline=test_pipeline))
test_dataloader = val_dataloader
