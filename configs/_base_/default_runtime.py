# mmdet's runtime plus the import that registers this project's modules (one place for it: mmengine
# forbids the same key in two bases of one config) and the project's training hooks.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['projects.acouplenet'], allow_failed_imports=False)

custom_hooks = [
    # Heads' num_classes against the dataset's classes, before training, validation and testing.
    dict(type='ClassCountCheckHook'),
    # Stop at the first NaN/Inf loss, before a checkpoint of broken weights can be written.
    dict(type='NonFiniteLossHook'),
    # Checkpoints carry the random generators, so --resume continues exactly where the run stopped.
    dict(type='RNGStateHook'),
]

# Flip TTA (`mim test --tta`, `tools/test.py --tta`): mmdet's merge of the views' detections (tta_cfg: by default
# NMS at IoU 0.5, 100 kept) on the unflipped view's sample, whose gt boxes the metric compares and --show-dir draws
# (mmdet's DetTTAModel takes the first view's, which its default TTA pipeline has flipped about the resized
# image's width).
tta_model = dict(type='UnflippedViewTTAModel')
