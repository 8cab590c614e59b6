# Online hard example mining as in R-FCN: the 128 highest-loss RoIs of the top 300 proposals, through
# mmdet's OHEMSampler (it scores all candidates with the coupled head).
_base_ = './couplenet_r101_1xb2-110k_voc0712.py'
model = dict(
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=6000, max_per_img=300),
        rcnn=dict(sampler=dict(_delete_=True, type='OHEMSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                               add_gt_as_proposals=True))))
