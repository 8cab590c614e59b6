# ACoupleNet, ResNet-101, COCO train+val, as in the paper's Table IX (35.4 AP on test-dev):
# 8 GPUs x 2 images, multi-scale training, 180k iterations.
_base_ = [
    '../_base_/models/acouplenet_r101.py', '../_base_/datasets/coco_instance_ms.py',
    '../_base_/schedules/schedule_coco_180k.py'
]
