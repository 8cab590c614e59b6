# Base of the VOC ablations (paper Tables I-III): CoupleNet, 1x1 conv normalisation + element-wise sum,
# context on the global branch, single-scale training on VOC07+12, 11-point mAP on VOC07 test.
_base_ = [
    '../../_base_/models/couplenet_r101.py', '../../_base_/datasets/voc0712_sbd.py',
    '../../_base_/schedules/schedule_voc_110k.py'
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=20)))
