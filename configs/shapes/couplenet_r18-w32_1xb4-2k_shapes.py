# CoupleNet (no attention) on the shapes dataset, otherwise the main job's ACoupleNet.
_base_ = './acouplenet_r18-w32_1xb4-2k_shapes.py'
model = dict(backbone=dict(attention_stages=()))
