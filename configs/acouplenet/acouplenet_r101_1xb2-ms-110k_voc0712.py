# ACoupleNet, ResNet-101, VOC07+12+SBD masks, multi-scale training: 82.6 mAP on VOC07 test in the
# paper's Table VI.
_base_ = [
    '../_base_/models/acouplenet_r101.py', '../_base_/datasets/voc0712_sbd_ms.py',
    '../_base_/schedules/schedule_voc_110k.py'
]
model = dict(roi_head=dict(bbox_head=dict(num_classes=20)))
