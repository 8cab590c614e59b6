# Tables I and II: R-FCN, the local (position-sensitive) branch alone.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(with_global=False)))
