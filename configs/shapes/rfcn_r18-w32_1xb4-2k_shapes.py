# R-FCN (CoupleNet's local branch alone) on the shapes dataset.
_base_ = './couplenet_r18-w32_1xb4-2k_shapes.py'
model = dict(roi_head=dict(bbox_head=dict(with_global=False)))
