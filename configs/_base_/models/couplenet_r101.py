# CoupleNet (the conference version): ACoupleNet without the cascade attention.
_base_ = './acouplenet_r101.py'
model = dict(backbone=dict(attention_stages=()))
