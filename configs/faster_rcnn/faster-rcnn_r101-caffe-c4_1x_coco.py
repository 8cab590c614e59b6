# mmdet's own Faster R-CNN with a ResNet-101 C4 head (conv5 run on every RoI), the paper's speed baseline
# (Table VI). mmdet ships only the R-50 version of this config.
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py', 'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py'
]
model = dict(
    backbone=dict(depth=101, init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe')),
    roi_head=dict(
        shared_head=dict(
            depth=101, init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe'))))
