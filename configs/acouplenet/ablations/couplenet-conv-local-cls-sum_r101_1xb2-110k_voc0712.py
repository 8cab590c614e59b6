# Table I's best pair (a 1x1 conv scale, element-wise sum) as the authors' released CoupleNet defines it
# (test_agnostic.prototxt): the scale, a (C+1) -> (C+1) 1x1 conv, on the local branch's voted class scores
# alone; the global branch's scores and both branches' box deltas are summed as they are. The paper's text,
# and couplenet-conv-sum, scale every branch's scores and deltas: 3.2 AP ahead of this layout at two seeds on
# the shapes data (docs/shapes_experiments.md, "Table I: what the 1x1 conv scale normalises").
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(
    roi_head=dict(
        bbox_head=dict(normalization='conv', normalized_branches=('local', ), normalize_deltas=False,
                       coupling='sum')))
