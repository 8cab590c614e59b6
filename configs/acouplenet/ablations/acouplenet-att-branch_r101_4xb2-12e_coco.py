# The three attention blocks gating inside each stage's last residual block (attention_gate='branch':
# relu(x + A * F(x)), so the shortcut passes the ungated features on) instead of the paper's A * f on the
# stage output; not in the paper, see the README's results on the generated shapes data.
_base_ = './acouplenet_r101_4xb2-12e_coco.py'
model = dict(backbone=dict(attention_gate='branch'))
