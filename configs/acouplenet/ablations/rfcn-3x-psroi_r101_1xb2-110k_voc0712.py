# Table IV: "3x PSRoI pooling", three local (position-sensitive) FCNs in place of CoupleNet's local +
# global pair, coupled as CoupleNet couples its branches (1x1 conv normalisation + element-wise sum, the
# base's), the paper's check that the coupling's gain is not its parameter count (79.7 vs 82.1 mAP).
# The paper gives no more detail; each branch here has its own class and box maps on the shared
# reduced conv5 map (R-101 heads: this one 5.9 M parameters, R-FCN 3.4 M, CoupleNet 107 M).
_base_ = './rfcn_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(local_branches=3)))
