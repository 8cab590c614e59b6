# mmdet's own Faster R-CNN C4 (conv5 run on every RoI) on the shapes dataset, at the same backbone,
# width, anchors, RoI budget (128 per image, 300 test proposals) and schedule as the ACoupleNet config
# (the backbone settings repeat that config's, whose ResNet sits inside AttentionBackbone; a test keeps
# them equal). Kept from mmdet's model: the RPN's L1 box loss and the R-CNN test thresholds (score 0.05,
# NMS 0.5; ACoupleNet's are the paper's 0.001 and 0.3), with which its README row was measured.
# Its RoIAlign (14 x 14, aligned, adaptive sampling) runs as TorchvisionRoIExtractor, the same bins as
# mmcv's layer but with GatherRoIAlign's backward: mmcv's CPU backward was 0.56 s of a 4.2 s iteration.
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py', '../_base_/datasets/shapes.py',
    '../_base_/schedules/schedule_shapes_2k.py'
]

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        depth=18,
        base_channels=32,
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        zero_init_residual=False,
        style='pytorch',
        init_cfg=None),
    rpn_head=dict(in_channels=128, feat_channels=128, anchor_generator=dict(scales=[1, 2, 4, 8])),
    roi_head=dict(
        shared_head=dict(
            type='SlimResLayer', depth=18, base_channels=32, style='pytorch', norm_cfg=norm_cfg, norm_eval=False,
            init_cfg=None),
        bbox_roi_extractor=dict(type='TorchvisionRoIExtractor', out_channels=128),
        bbox_head=dict(in_channels=256, num_classes=6)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300), rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300)))
