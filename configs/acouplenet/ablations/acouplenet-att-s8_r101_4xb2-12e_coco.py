# Table V: attention blocks at s8 (attention_stages=(1, ); 0, 1, 2 = conv2, conv3, conv4 = strides 4, 8, 16).
_base_ = './acouplenet_r101_4xb2-12e_coco.py'
model = dict(backbone=dict(attention_stages=(1, )))
