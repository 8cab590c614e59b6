# Table III: no context region.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(with_context=False)))
