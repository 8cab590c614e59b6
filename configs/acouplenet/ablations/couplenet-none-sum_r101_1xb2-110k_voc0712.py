# Table I: normalisation 'none', coupling 'sum'.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(normalization='none', coupling='sum')))
