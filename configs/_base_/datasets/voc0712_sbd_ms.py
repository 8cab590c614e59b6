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
voc07 = dict(_base_.voc07, pipeline=train_pipeline)
voc12 = dict(_base_.voc12, pipeline=train_pipeline)
train_dataloader = dict(dataset=dict(datasets=[voc07, voc12]))
