# CoupleNet, ResNet-101, VOC07+12, multi-scale training: 82.1 mAP on VOC07 test in the paper's Table VI.
_base_ = './acouplenet_r101_1xb2-ms-110k_voc0712.py'
model = dict(backbone=dict(attention_stages=()))
