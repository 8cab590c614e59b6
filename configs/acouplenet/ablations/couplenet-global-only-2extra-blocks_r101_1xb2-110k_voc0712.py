# Table IV: the global branch alone with 2 extra residual blocks in its head (1x1x256, 3x3x256,
# 1x1x1024 on the reduced conv5 map), the paper's check that CoupleNet's gain is not its parameter count.
# Built as the text describes, a block adds 1.1 M parameters (R-101 heads: R-FCN 3.4 M, CoupleNet 107 M).
_base_ = './couplenet-global-only_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(extra_blocks=2)))
