# ACoupleNet, ResNet-101, COCO train+val, as in the paper's Table IX (35.4 AP on test-dev):
# 8 GPUs x 2 images, multi-scale training, 180k iterations.
_base_ = [
    '../_base_/models/acouplenet_r101.py', '../_base_/datasets/coco_trainval_ms.py',
    '../_base_/schedules/schedule_coco_180k.py'
]
# val2017 is training data here: no validation during training. `tools/test.py` writes the test-dev
# detections to <outfile_prefix>.bbox.json; the evaluation server wants it renamed to .json and zipped.
val_dataloader = val_evaluator = val_cfg = None
test_evaluator = dict(
    outfile_prefix='./work_dirs/acouplenet_r101_8xb2-ms-180k_coco/detections_test-dev2017_acouplenet_results')
