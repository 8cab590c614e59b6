"""CPU timings of the project's RoI layers against the torchvision kernels they replace, bin for bin.

    python tools/benchmark_roi_layers.py [--runs 5] [--threads N]

- inference: ``RangeMaxRoIPool`` vs torchvision's ``RoIPool``, forward only, on the R-101 configs' global
  branch at 600 x 1000 (300 proposals + 300 context boxes over a 1024 x 38 x 63 conv5 map);
- training: ``GatherRoIAlign`` vs torchvision's ``RoIAlign``, forward + backward, on the shapes configs'
  global branch (1024 sampled RoIs of 4 images over a 128 x 16 x 16 map, sampling_ratio 2, aligned).

Each pair is checked equal (outputs, and input gradients for training) before it is timed; the table
gives the median of --runs after one warm-up run.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def random_rois(num, num_imgs, height, width, min_size, max_size, generator):
    import torch
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height], dtype=torch.float)
    wh = torch.rand(num, 2, generator=generator) * (max_size - min_size) + min_size
    img = torch.randint(num_imgs, (num, 1), generator=generator).float()
    return torch.cat([img, xy, xy + wh], 1)


def median_seconds(fn, runs):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    from projects.acouplenet.runtime import count_arg
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=count_arg(), default=5)
    parser.add_argument('--threads', type=count_arg(), default=None, help='torch CPU threads (default: torch\'s)')
    args = parser.parse_args(argv)

    import torch
    from torchvision.ops import RoIAlign, RoIPool

    from projects.acouplenet.roi_extractors import GatherRoIAlign, RangeMaxRoIPool
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []

    feat = torch.randn(1, 1024, 38, 63, generator=gen)
    rois = random_rois(600, 1, 600, 1000, 16, 400, gen)
    pools = [RoIPool(7, 1 / 16), RangeMaxRoIPool(7, 1 / 16)]
    with torch.no_grad():
        if not torch.equal(pools[0](feat, rois), pools[1](feat, rois)):
            sys.exit('error: RangeMaxRoIPool differs from torchvision RoIPool')
        for name, layer in zip(('torchvision RoIPool', 'RangeMaxRoIPool'), pools):
            rows.append(('inference, 600 RoIs, 1024 x 38 x 63', name,
                         median_seconds(lambda: layer(feat, rois), args.runs)))

    feat = torch.randn(4, 128, 16, 16, generator=gen)
    rois = random_rois(1024, 4, 256, 256, 8, 160, gen)
    aligns = [RoIAlign(7, 1 / 16, 2, aligned=True), GatherRoIAlign(7, 1 / 16, 2, aligned=True)]
    grad_out = torch.randn(1024, 128, 7, 7, generator=gen)

    def forward_backward(layer):
        x = feat.clone().requires_grad_()
        out = layer(x, rois)
        out.backward(grad_out)
        return out, x.grad

    (ref_out, ref_grad), (out, grad) = (forward_backward(layer) for layer in aligns)
    if not (torch.allclose(ref_out, out, atol=1e-5) and torch.allclose(ref_grad, grad, atol=1e-4)):
        sys.exit('error: GatherRoIAlign differs from torchvision RoIAlign')
    for name, layer in zip(('torchvision RoIAlign', 'GatherRoIAlign'), aligns):
        rows.append(('training fwd + bwd, 1024 RoIs, 128 x 16 x 16', name,
                     median_seconds(lambda: forward_backward(layer), args.runs)))

    print(f'cpu, {torch.get_num_threads()} threads, median of {args.runs} runs after 1 warm-up\n')
    print('| case | layer | time (ms) | speed-up |')
    print('|---|---|---|---|')
    for i, (case, name, seconds) in enumerate(rows):
        speedup = rows[i - 1][2] / seconds if i % 2 else 1.0
        print(f'| {case} | {name} | {1000 * seconds:.0f} | {speedup:.1f}x |')
    return rows


if __name__ == '__main__':
    main()
