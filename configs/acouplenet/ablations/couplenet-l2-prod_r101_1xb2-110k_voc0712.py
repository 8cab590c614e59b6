# Table I: normalisation 'l2', coupling 'prod'.
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(roi_head=dict(bbox_head=dict(normalization='l2', coupling='prod')))
