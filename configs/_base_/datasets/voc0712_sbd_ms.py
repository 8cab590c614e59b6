# voc0712_sbd.py with the paper's multi-scale training: shorter side from {480, 576, 600, 672, 768, 864},
# longer side <= 1000.
_base_ = './voc0712_sbd.py'

train_scales = [(1000, s) for s in (480, 576, 600, 672, 768, 864)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
# The pipeline sits inside the ConcatDataset's list, which inheritance replaces whole.
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
train_dataloader = dict(dataset=dict(datasets=[voc07, voc12]))
