# The paper's final COCO protocol (Sec. IV-D, Table IX): train on the union of COCO's 80k train and 40k val
# images (train2017 + val2017 hold exactly those images), multi-scale as in coco_instance_ms.py; test
# single-scale on test-dev2017, whose annotations are withheld, so the test writes the detections for the
# evaluation server (CocoMetric format_only) instead of scoring them. Leaf configs turn off validation during
# training (val2017 is training data here) and name their output file (test_evaluator.outfile_prefix).
_base_ = './coco_instance_ms.py'

coco_train2017 = dict(
    type='CheckedCocoDataset',
    data_root={{_base_.data_root}},
    ann_file='annotations/instances_train2017.json',
    data_prefix=dict(img='train2017/'),
    filter_cfg=dict(filter_empty_gt=True, min_size=32),
    pipeline={{_base_.train_pipeline}},
    backend_args={{_base_.backend_args}})
coco_val2017 = dict(coco_train2017, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'))
train_dataloader = dict(dataset=dict(_delete_=True, type='ConcatDataset', datasets=[coco_train2017, coco_val2017]))
test_dataloader = dict(
    dataset=dict(
        ann_file='annotations/image_info_test-dev2017.json', data_prefix=dict(img='test2017/'), test_mode=True))
test_evaluator = dict(format_only=True, ann_file='data/coco/annotations/image_info_test-dev2017.json')
