# ACoupleNet on the generated shapes dataset, sized for 2 CPU cores (the README's main job).
# The paper's model with only what the CPU and the data force to change:
# - backbone: ResNet-18 at half width, trained from scratch (no ImageNet weights offline), so its BN
#   layers train instead of staying frozen;
# - input: 256 x 256 images at their own size, anchors of 16-128 px for 16-144 px objects, 1000 RPN
#   boxes into NMS; RoIAlign in both branches (position-sensitive in the local one), as quantised pooling
#   of the many RoIs that cover only 1-3 cells of the 16 x 16 conv5 maps loses their layout (the global
#   branch alone at 2k iterations: 12.5 AP with the paper's RoI max pooling, 22.0 with RoIAlign);
# - schedule: 2k iterations of 4 images with AdamW (schedule_shapes_2k.py).
_base_ = [
    '../_base_/models/acouplenet_r101.py', '../_base_/datasets/shapes.py',
    '../_base_/schedules/schedule_shapes_2k.py'
]

norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        backbone=dict(
            depth=18,
            base_channels=32,
            frozen_stages=-1,
            norm_cfg=norm_cfg,
            norm_eval=False,
            zero_init_residual=False,
            style='pytorch',
            init_cfg=None)),
    rpn_head=dict(in_channels=128, feat_channels=128, anchor_generator=dict(scales=[1, 2, 4, 8])),
    roi_head=dict(
        ps_roi_extractor=dict(roi_layer=dict(type='PSRoIAlign', output_size=7, sampling_ratio=2)),
        bbox_roi_extractor=dict(
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=2, aligned=True), out_channels=128),
        bbox_head=dict(in_channels=256, mid_channels=128, global_channels=128, num_classes=6)),
    # (NMS over 2000 boxes per image was a fifth of a CPU iteration; 1000 of the 3072 anchors suffice)
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=300)),
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300)))
