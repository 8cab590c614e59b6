# Table III: context added to the local branch (PSRoI pooling of the 2x region) instead of the global one.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(with_context=True, context_branch='local')))
