# ACoupleNet, ResNet-101: cascade attention after conv2/3/4, RPN on conv4, coupled local (PSRoI) and
# global (RoI + 2x context) heads on a dilated conv5, stride 16 throughout (paper Sec. III, Fig. 2).
# Built on mmdet's C4 Faster R-CNN: same caffe-style ResNet input, RPN and train/test settings
# except where the paper differs.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50-caffe-c4.py'

norm_cfg = dict(type='BN', requires_grad=False)
model = dict(
    type='ACoupleNet',
    # pad_mask: instance masks reach the attention loss padded like the images.
    data_preprocessor=dict(pad_mask=True),
    backbone=dict(
        _delete_=True,
        type='AttentionBackbone',
        attention_stages=(0, 1, 2),  # conv2, conv3, conv4 (strides 4, 8, 16)
        # The paper gives no hidden width; 64 keeps the three blocks at ~10 GFLOPs at 600x1000 (256: ~40,
        # a quarter of R-FCN's whole inference) for a one-channel map.
        attention_channels=64,
        backbone=dict(
            type='ResNet',
            depth=101,
            num_stages=4,
            strides=(1, 2, 2, 1),
            dilations=(1, 1, 1, 2),  # dilated conv5 keeps stride 16 (R-FCN)
            out_indices=(2, 3),  # conv4 -> RPN, conv5 -> heads
            frozen_stages=1,
            norm_cfg=norm_cfg,
            norm_eval=True,
            style='caffe',
            init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe'))),
    loss_attention=dict(type='AttentionLoss', loss_weight=1.0, target_source='mask'),
    rpn_feat_index=0,
    roi_feat_index=1,
    # The authors' definition: 3x3 conv with 512 channels, 9 anchors, on conv4.
    rpn_head=dict(
        in_channels=1024,
        feat_channels=512,
        anchor_generator=dict(scales=[8, 16, 32], ratios=[0.5, 1.0, 2.0], strides=[16]),
        loss_bbox=dict(_delete_=True, type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        _delete_=True,
        type='CoupledRoIHead',
        ps_roi_extractor=dict(
            type='PSRoIExtractor', roi_layer=dict(type='PSRoIPool', output_size=7), featmap_strides=[16]),
        # The paper's RoI (max) pooling, from torchvision: mmcv's RoIPool has no CPU kernel.
        bbox_roi_extractor=dict(
            type='TorchvisionRoIExtractor',
            roi_layer=dict(type='RoIPool', output_size=7),
            out_channels=1024,
            featmap_strides=[16]),
        bbox_head=dict(
            type='CoupledBBoxHead',
            in_channels=2048,
            mid_channels=1024,
            global_channels=1024,
            group_size=7,
            num_classes=80,
            with_local=True,
            with_global=True,
            with_context=True,
            context_branch='global',
            context_scale=2.0,
            normalization='conv',
            coupling='sum',
            reg_class_agnostic=True,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))),
    train_cfg=dict(
        # 128 RoIs per image (paper eq. 4).
        rcnn=dict(sampler=dict(num=128, pos_fraction=0.25))),
    test_cfg=dict(
        # Top 300 proposals at test time (paper Table VI, following R-FCN).
        rpn=dict(nms_pre=6000, max_per_img=300),
        rcnn=dict(score_thr=0.001, nms=dict(type='nms', iou_threshold=0.3), max_per_img=100)))
