# Table III: context on the global branch (RoI pooling of the 2x region, concatenated), the paper's choice.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(with_context=True, context_branch='global')))
