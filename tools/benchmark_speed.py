"""Inference speed of ACoupleNet, CoupleNet, R-FCN and mmdet's Faster R-CNN R-101-C4, side by side.

    python tools/benchmark_speed.py [--device cpu|cuda] [--shape 600 1000] [--warmup 2] [--runs 5]
                                    [--rounds 1] [--models ...] [--threads N] [--no-flops] [--profile]
                                    [--paired N] [--tf32] [--out work_dirs/benchmark_speed]

ResNet-101 models with random weights on one 600 x 1000 image, COCO's 81 classes, the paper's test
setting: top 300 proposals (Table VI); Faster R-CNN C4 also with mmdet's default 1000. Every model
post-processes alike, with the paper configs' R-CNN test settings (score threshold 0.001, NMS at 0.3, 100
detections; mmdet's C4 default is 0.05 / 0.5). Each model runs in its own process so that its peak memory
(resident set on CPU, torch's allocator on GPU) is its own. Prints one table with latency, throughput,
peak memory, FLOPs and parameters, and the ratios the README reports; writes benchmark.md /
benchmark.json into --out.

Three latencies per model: ``predict`` (end to end, what a user waits for), the network alone
(``_forward``: backbone, RPN with its proposal NMS, RoI head scores and deltas, without the per-class NMS
of the detections) and the backbone alone (``extract_feat``, with the attention blocks where there are).
Speed does not depend on the weights except in that last NMS: how many of the 300 x 80 class boxes clear
the score threshold is arbitrary with random weights (mmcv's ``batched_nms`` loops over the classes above
10k boxes), so the network latency is the like-for-like comparison.

On a shared host whose speed drifts, a model timed in a slow minute looks slow: ``--rounds N`` times
every model N times in turn (FLOPs counted once) and reports the median over all rounds' runs, with the
latency ratio to R-FCN of each round, so that the drift is visible next to the result.

``--paired N`` measures the ratios against that drift: one more process builds every model and times
their networks alternately, model after model (the order rotating), N times, so that each ratio is taken
between runs seconds apart; the ratio lines then add the median of those N paired ratios and their
quartiles. (Peak memory stays the per-model processes'.) ``--rounds 0 --paired N`` runs the paired
timing alone: a table of paired network times and their ratios, without the per-model processes, which
take most of a run's time (for a GPU lent for minutes).

Every median time here is ``statistics.median_high``: of an even count of runs, the higher of the two
middle ones, a time some run took rather than the mean of two. The paired ratios are summarised by their
interpolated quartiles, whose middle one is the ordinary median of the ratios.

``--profile`` adds where the time goes: ``torch.profiler`` over one ``_forward`` per model (first round),
the top operators by self time on the device (CUDA kernels on a GPU), written to profile_<device>.txt.

``--tf32`` (CUDA only) times every model with TF32 matrix products
(``torch.backends.cuda.matmul.allow_tf32``), a switch PyTorch leaves off and a user sets before inference;
cuDNN's convolutions use TF32 either way (PyTorch's default). Its files are named ``*_cuda_tf32.*``.

On a CPU, ``THP_MEM_ALLOC_ENABLE=1`` in the environment (PyTorch backs its allocations of 2 MB and more with
huge pages; the model processes inherit it) spares the page faults of fresh large buffers: 10-26% faster
networks for all five models on a 2-core AMD EPYC host, but no faster ACoupleNet or R-FCN and a 16% slower
Faster R-CNN C4 on a 2-core Intel Xeon host (docs/speed.md). The table's header names it when set.

The global branch alone (``global``, with R-FCN the cost of an ensemble of the two branches) and three
variants are timed on request only: ``acouplenet-branch`` (the attention gates inside the last residual
blocks), ``acouplenet-blas`` (ACoupleNet with its global branch's products in ``F.linear``, PyTorch's BLAS,
instead of oneDNN on the CPU: ``--models acouplenet acouplenet-blas rfcn --paired N`` times what oneDNN saves)
and ``acouplenet-copy`` (its k x k conv weight in the default layout instead of channels-last, so that the
pooled proposal + context features are copied into the product's order: ``--models acouplenet
acouplenet-copy --paired N`` times what reading them in place saves).
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from typing import Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)  # for projects.acouplenet without an installed package
MODELS = {
    'acouplenet': ('ACoupleNet R-101', 'configs/acouplenet/acouplenet_r101_8xb2-ms-180k_coco.py', 300),
    'couplenet': ('CoupleNet R-101', 'configs/acouplenet/couplenet_r101_4xb1-ms-580k_coco.py', 300),
    'rfcn': ('R-FCN R-101 (local branch)', 'configs/acouplenet/ablations/rfcn_r101_1xb2-110k_voc0712.py', 300),
    'faster-rcnn-300': ('Faster R-CNN R-101-C4, 300 proposals',
                        'configs/faster_rcnn/faster-rcnn_r101-caffe-c4_1x_coco.py', 300),
    'faster-rcnn-1000': ('Faster R-CNN R-101-C4, 1000 proposals (mmdet default)',
                         'configs/faster_rcnn/faster-rcnn_r101-caffe-c4_1x_coco.py', 1000),
    # Not timed by default: the global branch alone. With R-FCN's time, what an ensemble of the two branches
    # trained apart (tools/fuse_results.py; the paper's Table II) costs against CoupleNet's coupling.
    'global': ('Global FCN R-101 (global branch)',
               'configs/acouplenet/ablations/couplenet-global-only_r101_1xb2-110k_voc0712.py', 300),
    # Not in the paper (nor timed by default): the gates inside the last residual blocks.
    'acouplenet-branch': ('ACoupleNet R-101, gates on the last residual branches',
                          'configs/acouplenet/ablations/acouplenet-att-branch_r101_4xb2-12e_coco.py', 300),
    # ACoupleNet with its global products in F.linear (BLAS) instead of oneDNN on the CPU (blas_linear).
    'acouplenet-blas': ('ACoupleNet R-101, global products in BLAS (F.linear)',
                        'configs/acouplenet/acouplenet_r101_8xb2-ms-180k_coco.py', 300),
    # ACoupleNet with its k x k conv weight in the default (not channels-last) layout: the pooled
    # proposal + context features are then copied into the product's order on every call.
    'acouplenet-copy': ('ACoupleNet R-101, k x k conv weight not channels-last (features copied)',
                        'configs/acouplenet/acouplenet_r101_8xb2-ms-180k_coco.py', 300),
}
DEFAULT_MODELS = ['acouplenet', 'couplenet', 'rfcn', 'faster-rcnn-300', 'faster-rcnn-1000']


def parse_args(argv=None):
    from projects.acouplenet.runtime import count_arg, device_arg
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', type=device_arg, help='cpu, cuda or cuda:N')
    parser.add_argument('--shape', type=count_arg(), nargs=2, default=(600, 1000), metavar=('HEIGHT', 'WIDTH'))
    parser.add_argument('--warmup', type=count_arg(0), default=2)
    parser.add_argument('--runs', type=count_arg(), default=5, help='timed runs per model and round')
    parser.add_argument('--rounds', type=count_arg(0), default=1,
                        help='times every model in turn this many times, each in its own process (0: only the '
                             'paired timing, with --paired N)')
    parser.add_argument('--threads', type=count_arg(), default=None, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--models', nargs='+', choices=list(MODELS), default=DEFAULT_MODELS,
                        help=f'default: {" ".join(DEFAULT_MODELS)}')
    parser.add_argument('--no-flops', action='store_true', help='skip FLOPs counting (slow on CPU)')
    parser.add_argument('--profile', action='store_true',
                        help='also write the top operators of one _forward per model to profile_<device>.txt')
    parser.add_argument('--tf32', action='store_true',
                        help='CUDA only: allow TF32 matrix products (torch.backends.cuda.matmul.allow_tf32)')
    parser.add_argument('--paired', type=count_arg(0), default=0, metavar='N',
                        help='also time all models\' networks in one process, alternating, N times, for ratios '
                             'that the host\'s drift does not skew')
    parser.add_argument('--out', default='work_dirs/benchmark_speed')
    parser.add_argument('--worker', choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument('--paired-worker', action='store_true', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def paper_rcnn_test_cfg():
    """The R-CNN test settings of the paper configs (ACoupleNet's), which every benchmarked model uses."""
    from mmengine.config import Config
    return Config.fromfile(osp.join(REPO, MODELS['acouplenet'][1])).model.test_cfg.rcnn


def build(key: str, device: str):
    """The model of ``key`` with random weights, in eval mode, on ``device``."""
    from mmengine.config import Config

    from mmdet.registry import MODELS as REGISTRY
    from mmdet.utils import register_all_modules
    register_all_modules()
    import projects.acouplenet  # noqa: F401
    _, config, proposals = MODELS[key]
    cfg = Config.fromfile(osp.join(REPO, config))
    cfg.model.roi_head.bbox_head.num_classes = 80
    cfg.model.test_cfg.rpn.max_per_img = proposals
    # One post-processing for all models (the paper configs'): see the module docstring.
    cfg.model.test_cfg.rcnn = paper_rcnn_test_cfg()
    # The wrapped ResNet (inside AttentionBackbone) or the plain one holds the pretrained init_cfg.
    backbone = cfg.model.backbone.get('backbone', cfg.model.backbone)
    for part in (backbone, cfg.model.roi_head.get('shared_head', {})):
        if part:
            part['init_cfg'] = None  # random weights: no download
    model = REGISTRY.build(cfg.model)
    model.init_weights()
    if key == 'acouplenet-copy':
        weight = model.roi_head.bbox_head.global_conv.weight
        weight.data = weight.data.contiguous()
    if key == 'acouplenet-blas':
        from projects.acouplenet.coupled_bbox_head import blas_linear
        for name in ('predict', '_forward'):
            setattr(model, name, _inside(blas_linear, getattr(model, name)))
    return model.to(device).eval()


def _inside(context, method):
    """``method`` run inside ``context()`` on every call."""
    def run(*args, **kwargs):
        with context():
            return method(*args, **kwargs)
    return run


def apply_torch_settings(args) -> None:
    """``--tf32`` and ``--threads``, set in the worker process where the models run (defaults elsewhere)."""
    import torch
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.threads is not None:
        torch.set_num_threads(args.threads)


class Inputs:
    """One random (1, 3, H, W) image, padded as mmdet pads, its data sample, and a timer of model calls."""

    def __init__(self, args) -> None:
        import torch

        from mmdet.structures import DetDataSample
        self.torch, self.DetDataSample, self.device = torch, DetDataSample, args.device
        self.shape = tuple(args.shape)
        h, w = self.shape
        self.pad_shape = ((h + 31) // 32 * 32, (w + 31) // 32 * 32)
        self.images = torch.randn(1, 3, *self.pad_shape, device=args.device) * 50

    def sample(self):
        s = self.DetDataSample()
        s.set_metainfo(dict(img_shape=self.shape, ori_shape=self.shape, pad_shape=self.pad_shape,
                            batch_input_shape=self.pad_shape, scale_factor=(1.0, 1.0)))
        return s

    def sync(self) -> None:
        if self.device.startswith('cuda'):
            self.torch.cuda.synchronize()

    def timed(self, fn) -> float:
        """Seconds of one ``fn(images, [sample])``, device work included."""
        t0 = time.perf_counter()
        fn(self.images, [self.sample()])
        self.sync()
        return time.perf_counter() - t0


def worker(args) -> dict:
    import resource

    import torch
    apply_torch_settings(args)
    model = build(args.worker, args.device)
    inputs = Inputs(args)
    images, sample, sync, timed = inputs.images, inputs.sample, inputs.sync, inputs.timed
    with torch.inference_mode():
        for _ in range(args.warmup):
            model.predict(images, [sample()])
            model._forward(images, [sample()])
        sync()
        if args.device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        latencies, network, backbone = [], [], []
        for _ in range(args.runs):  # interleaved, so that all three see the same machine state
            latencies.append(timed(model.predict))
            network.append(timed(model._forward))
            backbone.append(timed(lambda inputs, _: model.extract_feat(inputs)))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith('cuda')
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result = dict(latencies_s=latencies, network_s=network, backbone_s=backbone, peak_memory_mb=peak,
                  params_m=sum(p.numel() for p in model.parameters()) / 1e6, gflops=None)
    if args.profile:
        result['profile'] = profile(model, images, sample, args.device)
    if not args.no_flops:
        from functools import partial

        from mmengine.analysis import FlopAnalyzer
        model.forward = partial(model._forward, batch_data_samples=[sample()])
        with torch.no_grad():
            analyzer = FlopAnalyzer(model, (images, ))
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            result['gflops'] = analyzer.total() / 1e9
    return result


def paired_worker(args) -> dict:
    """Network seconds of every model in ``args.models``, timed alternately in this one process.

    Returns:
        dict: ``{key: [seconds of round 0, round 1, ...]}``; in round ``i`` the
        models run in the order of ``args.models`` rotated by ``i``, so no model
        always runs first (or right after the slowest).
    """
    import torch
    apply_torch_settings(args)
    models = {key: build(key, args.device) for key in args.models}
    inputs = Inputs(args)
    keys = list(models)
    times = {key: [] for key in keys}
    with torch.inference_mode():
        for key in keys:
            for _ in range(max(args.warmup, 1)):
                models[key]._forward(inputs.images, [inputs.sample()])
        inputs.sync()
        for i in range(args.paired):
            for key in keys[i % len(keys):] + keys[:i % len(keys)]:
                times[key].append(inputs.timed(models[key]._forward))
    return times


def profile(model, images, sample, device: str, rows: int = 25) -> str:
    """The top operators of one ``_forward`` by self time on ``device``, as torch.profiler's table."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    on_gpu = device.startswith('cuda')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch.inference_mode(), torch_profile(activities=activities) as prof:
        model._forward(images, [sample()])
        if on_gpu:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by='self_cuda_time_total' if on_gpu else 'self_cpu_time_total',
                                     row_limit=rows, max_name_column_width=70)


def table(rows, device) -> str:
    """The markdown table; with ``--paired``, a column of each model's median paired network time."""
    paired = all('paired_network_s' in r for _, r in rows)
    if not all('latency_s' in r for _, r in rows):  # --rounds 0: the paired timing alone
        lines = [f'| Model ({device}) | paired network (s) |', '|---|---|']
        lines += [f'| {MODELS[key][0]} | {statistics.median_high(r["paired_network_s"]):.4f} |' for key, r in rows]
        return '\n'.join(lines)
    lines = [f'| Model ({device}) | latency (s) | images/s | network (s) | backbone (s) | '
             + ('paired network (s) | ' if paired else '') + 'peak memory (MB) | GFLOPs | params (M) |',
             '|---|---|---|---|---|' + ('---|' if paired else '') + '---|---|---|']
    for key, r in rows:
        gflops = f'{r["gflops"]:.0f}' if r.get('gflops') else '-'
        lines.append(f'| {MODELS[key][0]} | {r["latency_s"]:.4f} | {r["images_per_s"]:.2f} | '
                     f'{r["network_latency_s"]:.4f} | {r["backbone_latency_s"]:.4f} | '
                     + (f'{statistics.median_high(r["paired_network_s"]):.4f} | ' if paired else '')
                     + f'{r["peak_memory_mb"]:.0f} | {gflops} | {r["params_m"]:.1f} |')
    return '\n'.join(lines)


def summarize(rounds: list) -> dict:
    """One model's result from its rounds of worker results: median latency and throughput of all runs."""
    def pooled(key: str) -> list:
        return sorted(t for r in rounds for t in r[key])

    latencies, network, backbone = pooled('latencies_s'), pooled('network_s'), pooled('backbone_s')
    result = dict(rounds[0])  # params and FLOPs (counted in the first round)
    result.update(latencies_s=latencies, latency_s=statistics.median_high(latencies),
                  mean_latency_s=sum(latencies) / len(latencies), images_per_s=len(latencies) / sum(latencies),
                  round_latency_s=[statistics.median_high(r['latencies_s']) for r in rounds],
                  network_s=network, network_latency_s=statistics.median_high(network),
                  round_network_latency_s=[statistics.median_high(r['network_s']) for r in rounds],
                  backbone_s=backbone, backbone_latency_s=statistics.median_high(backbone),
                  peak_memory_mb=max(r['peak_memory_mb'] for r in rounds))
    return result


def paired_ratios(numerator: list, denominator: list) -> Tuple[float, float, float]:
    """Median and quartiles of the round-by-round ratios ``numerator[i] / denominator[i]``.

    All three interpolate (``statistics.quantiles``, inclusive), so the median lies between the quartiles.
    """
    values = [x / y for x, y in zip(numerator, denominator)]
    if len(values) < 2:
        return values[0], values[0], values[0]
    low, median, high = statistics.quantiles(values, n=4, method='inclusive')
    return low, median, high


def ratios(results: dict) -> list:
    """The README's ratios, end to end and for the network alone (see the module docstring)."""
    lines = []
    if 'acouplenet' not in results:
        return lines
    a = results['acouplenet']

    def by_round(key, other):
        per_round = [x / y for x, y in zip(a[key], results[other][key])]
        return f' (by round: {", ".join(f"{r:.2f}x" for r in per_round)})' if len(per_round) > 1 else ''

    def paired_summary(numerator: dict, denominator: dict) -> str:
        low, median, high = paired_ratios(numerator['paired_network_s'], denominator['paired_network_s'])
        return (f'paired network (one process, alternating, {len(numerator["paired_network_s"])} rounds): '
                f'median {median:.2f}x, quartiles {low:.2f}x-{high:.2f}x')

    def paired(numerator: dict, denominator: dict) -> str:
        if 'paired_network_s' not in numerator or 'paired_network_s' not in denominator:
            return ''
        return '; ' + paired_summary(numerator, denominator)

    def line(label: str, numerator: dict, denominator: dict, per_process, target: str = '') -> str:
        """``label: <per-process ratios>; <paired ratio><target>``; with ``--rounds 0`` the paired ratio alone."""
        if 'latency_s' not in a:
            return f'{label}: {paired_summary(numerator, denominator)}{target}'
        return f'{label}: {per_process(numerator, denominator)}{paired(numerator, denominator)}{target}'

    def latency(numerator: dict, denominator: dict) -> str:
        return (f'{numerator["latency_s"] / denominator["latency_s"]:.2f}x end to end, '
                f'{numerator["network_latency_s"] / denominator["network_latency_s"]:.2f}x network')

    def throughput(faster_rcnn: dict, acouplenet: dict) -> str:
        return (f'{acouplenet["images_per_s"] / faster_rcnn["images_per_s"]:.2f}x end to end, '
                f'{faster_rcnn["network_latency_s"] / acouplenet["network_latency_s"]:.2f}x network')

    def latency_by_round(numerator: dict, rfcn: dict) -> str:
        return (f'{numerator["latency_s"] / rfcn["latency_s"]:.2f}x end to end{by_round("round_latency_s", "rfcn")}, '
                f'{numerator["network_latency_s"] / rfcn["network_latency_s"]:.2f}x network'
                f'{by_round("round_network_latency_s", "rfcn")}')

    for key in ('faster-rcnn-300', 'faster-rcnn-1000'):
        if key in results:
            lines.append(line(f'ACoupleNet throughput / {MODELS[key][0]}', results[key], a, throughput,
                              ' (target >= 2.5x)'))
    if 'rfcn' in results:
        lines.append(line('ACoupleNet latency / R-FCN latency', a, results['rfcn'], latency_by_round,
                          ' (target <= 1.3x)'))
    if 'couplenet' in results:
        lines.append(line('ACoupleNet latency / CoupleNet latency', a, results['couplenet'], latency))
    if 'acouplenet-branch' in results:
        lines.append(line('ACoupleNet with branch gates latency / ACoupleNet latency', results['acouplenet-branch'],
                          a, latency))
    if 'acouplenet-blas' in results:
        lines.append(line('ACoupleNet latency / ACoupleNet with BLAS products latency', a, results['acouplenet-blas'],
                          latency))
    if 'acouplenet-copy' in results:
        lines.append(line('ACoupleNet latency / ACoupleNet with copied global features latency', a,
                          results['acouplenet-copy'], latency))
    return lines


def run_worker(args, extra: list, what: str):
    """Run this script as a worker process with ``extra`` arguments; its RESULT json."""
    cmd = [sys.executable, __file__, '--device', args.device, '--shape', *map(str, args.shape),
           '--warmup', str(args.warmup), '--runs', str(args.runs), *extra]
    if args.threads is not None:
        cmd += ['--threads', str(args.threads)]
    if args.tf32:
        cmd.append('--tf32')
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
    if out.returncode != 0 or not lines:
        raise SystemExit(f'{what} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}')
    return json.loads(lines[-1][len('RESULT '):])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print('RESULT ' + json.dumps(worker(args)), flush=True)
        return
    if args.paired_worker:
        print('RESULT ' + json.dumps(paired_worker(args)), flush=True)
        return
    if args.rounds == 0 and not args.paired:
        raise SystemExit('error: --rounds 0 times no model in its own process, so it needs the paired timing; '
                         'add --paired N (e.g. --paired 20) or pass --rounds 1')
    if args.rounds == 0 and args.profile:
        raise SystemExit('error: --profile profiles one _forward in each model\'s own process, which --rounds 0 '
                         'skips; drop --profile or pass --rounds 1')
    if args.tf32 and not args.device.startswith('cuda'):
        raise SystemExit(f'error: --tf32 is a CUDA precision setting and does nothing on --device {args.device}; '
                         'drop --tf32 or run with --device cuda')
    from projects.acouplenet.runtime import folder_arg_or_exit
    os.makedirs(folder_arg_or_exit(args.out, '--out'), exist_ok=True)
    rounds = {key: [] for key in args.models}
    for round_index in range(args.rounds):
        for key in args.models:
            extra = ['--worker', key]
            if args.no_flops or round_index > 0:  # FLOPs do not change between rounds
                extra.append('--no-flops')
            if args.profile and round_index == 0:
                extra.append('--profile')
            print(f'[benchmark_speed] round {round_index + 1}/{args.rounds}: {MODELS[key][0]} ...', flush=True)
            rounds[key].append(run_worker(args, extra, key))
    results = {key: summarize(r) for key, r in rounds.items()} if args.rounds else {key: {} for key in args.models}
    if args.paired:
        print(f'[benchmark_speed] paired: {args.paired} rounds of {len(args.models)} models in one process ...',
              flush=True)
        paired = run_worker(args, ['--paired-worker', '--paired', str(args.paired), '--models', *args.models],
                            'the paired timing')
        for key, seconds in paired.items():
            results[key]['paired_network_s'] = seconds
    profiles = {key: r.pop('profile') for key, r in results.items() if 'profile' in r}
    import torch

    from projects.acouplenet.runtime import cpu_name, host_info
    if args.device.startswith('cuda'):
        device = torch.cuda.get_device_name(0)
    else:  # the CPU's model and the kernel level torch picks for it, which set the times
        host = host_info()
        device = f'cpu: {cpu_name(host)}'
    threads = torch.get_num_threads() if args.threads is None else args.threads
    runs = (f'median (the higher middle one of an even count) of {args.runs} runs'
            + (f' x {args.rounds} rounds (the models in turn)' if args.rounds > 1 else ''))
    if not args.rounds:
        runs = (f'network only, median (the higher middle one of an even count) of {args.paired} runs, all models '
                f'in one process in turn')
    rcnn = paper_rcnn_test_cfg()
    huge_pages = os.environ.get('THP_MEM_ALLOC_ENABLE')  # the workers inherit it: see the module docstring
    header = (f'{args.shape[0]} x {args.shape[1]} input, batch 1, random weights, 81 classes, R-CNN score threshold '
              f'{rcnn.score_thr} and NMS {rcnn.nms.iou_threshold} for all; {runs} after {args.warmup} warm-up; {device}'
              + (f', {threads} threads' if args.device == 'cpu' else '')
              + (f', THP_MEM_ALLOC_ENABLE={huge_pages}' if args.device == 'cpu' and huge_pages else '')
              + (', TF32 matrix products' if args.tf32 else ''))
    text = '\n'.join([header, '', table(list(results.items()), args.device), '', *ratios(results)])
    file_tag = args.device.split(':')[0] + ('_tf32' if args.tf32 else '')  # cuda:1 -> cuda, cuda_tf32
    from projects.acouplenet.fileio import atomic_write
    atomic_write(text + '\n', osp.join(args.out, f'benchmark_{file_tag}.md'))
    atomic_write(json.dumps(results, indent=2), osp.join(args.out, f'benchmark_{file_tag}.json'))
    if profiles:
        atomic_write(header + '\n' + ''.join(f'\n== {MODELS[key][0]}: one _forward\n{profile}\n'
                                             for key, profile in profiles.items()),
                     osp.join(args.out, f'profile_{file_tag}.txt'))
    print(text)


if __name__ == '__main__':
    main()
