"""Fuse the predictions of several models (a model ensemble, the paper's Table II) and evaluate them.

    python tools/fuse_results.py CONFIG RESULTS.pkl RESULTS.pkl [...] [--method {wbf,nms}] [--weights W ...]
                                 [--iou-thr T] [--conf-type avg] [--max-per-img N] [--names NAME ...]
                                 [--out fused.pkl] [--cfg-options k=v ...]

Each RESULTS.pkl is what `tools/test.py CONFIG_i CHECKPOINT_i --out RESULTS.pkl` writes (mmdet's format;
any detector of this project or of mmdet) on the test set of CONFIG. CONFIG's test dataset and evaluator
(COCO box AP, VOC mAP) score each model alone and their fused detections, printed as one table:
`--method wbf` (default) is mmdet's weighted boxes fusion, `nms` the union of the detections with
class-wise NMS (projects/acouplenet/ensemble.py). `--out` writes the fused detections in the same format,
for mmdet's analysis tools (`mim run mmdet analyze_results CONFIG fused.pkl OUT_DIR`).

(mmdet 3.3's own tools/analysis_tools/fuse_results.py stops with an AttributeError whatever it is given: it
reads `args.models_name` and `args.pred_results`, which its parser does not define; it reads COCO json
results and scores them with pycocotools alone, so neither VOC's metric nor tools/test.py's files.)
"""
import argparse
import os.path as osp
import pickle
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root, for `projects`


def parse_args(argv=None):
    from mmengine.config import DictAction

    from projects.acouplenet.ensemble import FUSION_METHODS, WBF_CONF_TYPES
    from projects.acouplenet.runtime import count_arg, folder_arg_or_exit
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the config whose test set and evaluator score the results')
    parser.add_argument('results', nargs='+', help='two or more prediction files of tools/test.py --out')
    parser.add_argument('--method', choices=FUSION_METHODS, default='wbf', help='default: %(default)s')
    parser.add_argument('--weights', type=float, nargs='+', help='one per results file (default: 1 each)')
    parser.add_argument('--iou-thr', type=float, default=None,
                        help='overlap above which two boxes of one class are one object (default: 0.55 for wbf, '
                        'the NMS threshold of CONFIG\'s R-CNN test settings for nms)')
    parser.add_argument('--conf-type', choices=WBF_CONF_TYPES, default='avg',
                        help='how wbf scores a fused box (default: %(default)s)')
    parser.add_argument('--max-per-img', type=count_arg(), default=None,
                        help='detections kept per image (default: CONFIG\'s R-CNN max_per_img, else 100)')
    parser.add_argument('--names', nargs='+', help='a name for each results file in the table (default: file names)')
    parser.add_argument('--out', help='write the fused predictions to this .pkl file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, as key=value pairs (mmdet syntax)')
    args = parser.parse_args(argv)
    if len(args.results) < 2:
        parser.error(f'{len(args.results)} results file: an ensemble fuses two or more')
    for flag, values in (('--weights', args.weights), ('--names', args.names)):
        if values is not None and len(values) != len(args.results):
            parser.error(f'{flag}: {len(values)} given for {len(args.results)} results files; give one per file')
    if args.weights is not None and not all(w > 0 for w in args.weights):
        parser.error(f'--weights {args.weights}: every weight must be above 0')
    if args.iou_thr is not None and not 0 < args.iou_thr < 1:
        parser.error(f'--iou-thr {args.iou_thr}: must lie between 0 and 1')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out {args.out}: the fused predictions file must end in .pkl or .pickle')
    for path in (args.config, *args.results):
        if not osp.isfile(path):
            parser.error(f'{path}: not found')
    if args.out is not None:
        folder_arg_or_exit(osp.dirname(osp.abspath(args.out)), "--out's folder")
    return args


def load_predictions(path: str, image_ids: set) -> dict:
    """The predictions of ``path`` (a ``tools/test.py --out`` file) by image id, checked against the test set.

    Raises:
        ValueError: the file is not such a predictions file, or does not cover the test set's images.
    """
    from projects.acouplenet.safe_loading import load_predictions_file
    try:
        results = load_predictions_file(path)
    except ValueError as exc:
        raise ValueError(f'{exc}: write one with tools/test.py CONFIG CHECKPOINT --out {osp.basename(path)}') from None
    if not (isinstance(results, list) and results and all(
            isinstance(r, dict) and 'img_id' in r and isinstance(r.get('pred_instances'), dict)
            and {'bboxes', 'scores', 'labels'} <= set(r['pred_instances']) for r in results)):
        raise ValueError(f'{path} holds no detections of the form tools/test.py --out writes (a list with each '
                         f'image\'s img_id and pred_instances with bboxes, scores, labels): write one with '
                         f'tools/test.py CONFIG CHECKPOINT --out {osp.basename(path)}')
    by_image = {r['img_id']: r for r in results}
    missing, foreign = image_ids - set(by_image), set(by_image) - image_ids
    if missing or foreign:
        raise ValueError(f'{path} holds {len(by_image)} images, the config\'s test set {len(image_ids)}: '
                         f'{len(missing)} of the test set missing (e.g. {sorted(missing, key=str)[:3]}), '
                         f'{len(foreign)} not in it (e.g. {sorted(foreign, key=str)[:3]}); test every model on '
                         f'the same test set, the one of the config given here')
    return by_image


def ground_truth(info: dict) -> dict:
    """An image's boxes as a test pipeline packs them (tools/test.py's files drop them, VOC's metric needs them)."""
    import torch
    instances = info.get('instances', [])
    packed = {}
    for key, ignored in (('gt_instances', False), ('ignored_instances', True)):
        chosen = [i for i in instances if bool(i.get('ignore_flag', 0)) == ignored]
        packed[key] = dict(bboxes=torch.tensor([i['bbox'] for i in chosen], dtype=torch.float32).reshape(-1, 4),
                           labels=torch.tensor([i['bbox_label'] for i in chosen], dtype=torch.long))
    return packed


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.registry import init_default_scope

    import projects.acouplenet  # noqa: F401 (registers the project's datasets)
    from mmdet.registry import DATASETS
    from projects.acouplenet.ensemble import fuse_detections
    from projects.acouplenet.fileio import atomic_write
    from projects.acouplenet.runtime import metrics_table

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    rcnn_test_cfg = cfg.get('model', {}).get('test_cfg', {}).get('rcnn') or {}
    iou_thr = args.iou_thr or (0.55 if args.method == 'wbf' else rcnn_test_cfg.get('nms', {}).get('iou_threshold', 0.5))
    max_per_img = args.max_per_img or rcnn_test_cfg.get('max_per_img', 100)

    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    infos = {info['img_id']: info for info in (dataset.get_data_info(i) for i in range(len(dataset)))}
    num_classes = len(dataset.metainfo['classes'])
    names = args.names or [osp.splitext(osp.basename(p))[0] for p in args.results]
    if len(set(names)) < len(names):  # (the table's rows are by name)
        names = [f'{i + 1}: {name}' for i, name in enumerate(names)]
    try:
        predictions = [load_predictions(path, set(infos)) for path in args.results]
    except ValueError as exc:
        raise SystemExit(f'error: {exc}') from None
    for path, by_image in zip(args.results, predictions):
        labels = [r['pred_instances']['labels'] for r in by_image.values()]
        top = max((int(label.max()) for label in labels if len(label)), default=-1)
        if top >= num_classes:
            raise SystemExit(f'error: {path} has class {top}, but the config\'s test set has {num_classes} classes: '
                             f'fuse predictions of models trained on its classes')

    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dataset.metainfo

    truth = {img_id: ground_truth(info) for img_id, info in infos.items()}  # (once, for every row)

    def evaluate(by_image: dict) -> dict:
        return evaluator.offline_evaluate([{**by_image[i], **truth[i]} for i in infos])

    rows = {name: evaluate(by_image) for name, by_image in zip(names, predictions)}
    fused = {}
    for img_id in infos:
        first = predictions[0][img_id]
        fused[img_id] = {**{k: v for k, v in first.items() if k != 'pred_instances'},
                         'pred_instances': fuse_detections([p[img_id]['pred_instances'] for p in predictions],
                                                           args.method, args.weights, iou_thr, max_per_img,
                                                           args.conf_type)}
    rows[f'fused ({args.method}, IoU {iou_thr:g})'] = evaluate(fused)
    print(metrics_table(rows), flush=True)
    if args.out:
        atomic_write(pickle.dumps([fused[i] for i in infos]), args.out)
        print(f'fused predictions: {args.out}', flush=True)
    return rows


if __name__ == '__main__':
    main()
