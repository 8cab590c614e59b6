# R-FCN: the local branch of CoupleNet alone (class-agnostic boxes, PSRoI pooling k=7, average voting).
_base_ = './couplenet_r101.py'
model = dict(roi_head=dict(bbox_head=dict(with_global=False)))
