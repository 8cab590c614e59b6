"""Training like an MMDetection user, on a tiny generated dataset: the main job, loss going down,
exact resume, DDP on CPU, mim, AMP on CPU and the NaN guard."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmdet.registry import HOOKS
from projects.acouplenet.safe_loading import load_checkpoint_file
from projects.acouplenet.shapes import fingerprint

from .conftest import REPO, SHAPES_CONFIG, load_tool, tiny_train_cfg

PYTHON = sys.executable


def _run(cmd, timeout=600, env=None, cwd=REPO):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    command = ' '.join(map(str, cmd))
    assert result.returncode == 0, f'{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}'
    return result


def _tiny_config_file(tmp_path, data_root, iters, extra=''):
    """A config file that inherits the real shapes config and points it at the tiny dataset."""
    root = f'{data_root}/'
    path = tmp_path / 'tiny_shapes.py'
    path.write_text(f'''_base_ = '{SHAPES_CONFIG}'
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(data_root='{root}'))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{root}'))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file='{root}annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end={iters})]
default_hooks = dict(checkpoint=dict(interval={iters}), logger=dict(interval=1))
log_processor = dict(window_size=1)
{extra}''')
    return path


def _scalars(work_dir):
    """The scalars mmengine logged (vis_data/scalars.json of the run)."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(work_dir) for f in fs if f == 'scalars.json']
    assert files, f'no scalars.json under {work_dir}'
    with open(files[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_main_job_end_to_end(tmp_path):
    main_job = load_tool('main_job')
    work_dir, data_root = tmp_path / 'main_job', tmp_path / 'shapes'
    # Training seed 5 where there is no dataset yet: the dataset is generated with seed 0, as for every
    # other training seed, so that runs of several seeds compare on one dataset.
    report = main_job.main(['--work-dir', str(work_dir), '--data-root', str(data_root), '--num-train', '8',
                            '--num-val', '4', '--seed', '5', '--iters', '4', '--figure-images', '2',
                            '--cfg-options', 'model.loss_attention.loss_weight=0.5'])
    for name in ('report.md', 'report.json', 'detections_and_attention.png', 'iter_4.pth'):
        assert (work_dir / name).is_file(), name
    saved = json.loads((work_dir / 'report.json').read_text())
    assert saved['iterations'] == 4 and saved['dataset']['val_images'] == 4
    # 4 of the config's 2000 iterations: the learning rate raised as far as it goes, twice the config's.
    assert saved['learning_rate_scale'] == 2 and saved['learning_rate'] == pytest.approx(2e-3)
    assert saved['dataset']['seed'] == 0 and saved['seed'] == 5
    # What the run was: its overrides and where it trained, so that runs are compared like with like.
    assert saved['cfg_options'] == {'model.loss_attention.loss_weight': 0.5} and saved['device'] == 'cpu'
    data_sha256 = fingerprint(str(data_root))
    assert saved['dataset']['sha256'] == data_sha256
    assert saved['host']['threads'] == torch.get_num_threads() and saved['host']['cpu_capability']
    # The CPU's family and model, which tell apart CPUs of one name (x86 Linux lists them).
    cpuinfo = open('/proc/cpuinfo').read() if os.path.isfile('/proc/cpuinfo') else ''
    family, model = (re.search(rf'^{key}\s*:\s*(\d+)$', cpuinfo, re.M) for key in ('cpu family', 'model'))
    assert saved['host']['cpu_id'] == (f'family {family[1]}, model {model[1]}' if family and model else None)
    assert set(saved['metrics']) == {'bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m',
                                     'bbox_mAP_l'}
    assert all(-1 <= v <= 1 for v in saved['metrics'].values())  # COCOeval gives -1 for an empty size range
    assert saved['train_seconds'] > 0 and saved['peak_memory_mb'] > 0
    markdown = (work_dir / 'report.md').read_text()
    assert '| AP | AP50 |' in markdown
    host = saved['host']
    assert (f'- host: {host["cpu"]}{", " + host["cpu_id"] if host["cpu_id"] else ""} ({host["cpu_capability"]}), '
            f'{host["threads"]} threads') in markdown
    assert 'generated with seed 0' in markdown
    assert ("on cpu, seed 5, learning rate 0.002 (the config's x 2.00, as the run is shorter than its 2000 "
            "iterations)") in markdown
    assert '- overrides: `model.loss_attention.loss_weight=0.5`' in markdown
    assert f'sha256 `{data_sha256[:16]}`' in markdown
    assert f'threads, torch {torch.__version__}' in markdown
    assert (work_dir / 'detections_and_attention.png').stat().st_size > 10_000
    assert report['metrics'] == saved['metrics']


def test_fit_iterations_keeps_what_fits_in_fifties_and_nothing_where_nothing_does():
    main_job = load_tool('main_job')
    # 200 val images at 1 s/iter: 0.25 * 200 s of evaluation and 20 s for the figure after training.
    assert main_job.seconds_after_training(1.0, 200) == pytest.approx(70)
    assert main_job.fit_iterations(2000, 0.3, 1080, 200) == 2000  # 600 + 35 s: all of them
    assert main_job.fit_iterations(2000, 1.0, 1070, 200) == 1000  # 1000 s for training
    assert main_job.fit_iterations(2000, 1.0, 1069, 200) == 950  # 999 fit: rounded down to fifties
    assert main_job.fit_iterations(2000, 1.0, 70 + 37.5, 200) == 37  # fewer than 50: as many as fit
    assert main_job.fit_iterations(2000, 1.0, 70.5, 200) == 0
    assert main_job.fit_iterations(2000, 1.0, -5, 200) == 0


def test_a_schedule_cut_short_raises_the_learning_rate_by_as_much_up_to_twice():
    from projects.acouplenet.runtime import short_schedule_lr_scale
    assert short_schedule_lr_scale(2000, 2000) == 1
    assert short_schedule_lr_scale(2000, 4000) == 1  # a longer run keeps the config's rate
    assert short_schedule_lr_scale(2000, 1600) == pytest.approx(1.25)
    assert short_schedule_lr_scale(2000, 1000) == 2
    assert short_schedule_lr_scale(2000, 900) == 2  # at most twice: the fastest rate measured to help
    assert short_schedule_lr_scale(2000, 1) == 2


def test_main_job_shortens_a_schedule_that_would_not_fit_its_time_budget(tmp_path, monkeypatch, capsys):
    main_job = load_tool('main_job')
    for value, message in (('-1', 'must be 0 (no budget) or more minutes, got -1'),
                           ('nan', 'must be 0 (no budget) or more minutes, got nan'),
                           ('20m', "'20m' is not a number of minutes")):
        with pytest.raises(SystemExit):
            main_job.parse_args(['--time-budget', value])
        assert f'argument --time-budget: {message}' in capsys.readouterr().err
    monkeypatch.setattr(main_job, 'measure_seconds_per_iter', lambda cfg: 0.9)  # a machine at 0.9 s/iter
    args = main_job.parse_args(['--work-dir', str(tmp_path / 'work')])
    cfg = main_job.build_cfg(args)
    assert cfg.train_cfg.max_iters == 2000
    # 1152 s of the 20 minutes (4% kept back), 65 s of them after training: 1207 iterations fit.
    schedule = main_job.plan_schedule(cfg, args, time.time(), 200)
    assert schedule == dict(time_budget_minutes=20.0, planned_iterations=2000, timed_seconds_per_iter=0.9,
                            learning_rate_scale=pytest.approx(2000 / 1200))
    assert cfg.train_cfg.max_iters == 1200 and cfg.default_hooks.checkpoint.interval == 1200
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-3 * 2000 / 1200)
    # warm-up and cosine decay at 60% of their length
    scheduler_spans = [[s.get(k) for k in ('begin', 'end', 'T_max')] for s in cfg.param_scheduler]
    assert scheduler_spans == [[0, 120, None], [120, 1200, 1080]]
    out = capsys.readouterr().out
    assert ("the config's 2000 iterations would take 30 minutes, over the 20-minute budget; training 1200 "
            "iterations instead, the learning-rate schedule scaled alike and its rate raised x1.67" in out
            and '--iters 2000 trains them all' in out)
    line, = main_job.schedule_lines(dict(schedule, iterations=1200))
    assert line == ("- schedule: **1200 of the config's 2000 iterations**, to fit the 20-minute budget (timed at "
                    "0.900 s/iter here); `--iters 2000` trains them all")
    # --iters N trains N iterations, and --time-budget 0 the config's, whatever they take: no timing. A run
    # shorter than the config's trains at the raised learning rate of a budgeted run of its length.
    for argv, iters, scale in ((['--iters', '1500'], 1500, 2000 / 1500), (['--iters', '4000'], 4000, 1),
                               (['--time-budget', '0'], 2000, 1)):
        args = main_job.parse_args(['--work-dir', str(tmp_path / 'work'), *argv])
        cfg = main_job.build_cfg(args)
        assert main_job.plan_schedule(cfg, args, time.time() - 3600, 200) == dict(
            time_budget_minutes=None, planned_iterations=2000, timed_seconds_per_iter=None,
            learning_rate_scale=pytest.approx(scale))
        assert cfg.train_cfg.max_iters == iters and cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-3 * scale)
    assert main_job.schedule_lines(dict(schedule, time_budget_minutes=None)) == []  # no line without a budget


def test_main_job_times_itself_without_changing_the_training_and_refuses_a_budget_too_small(tmp_path, tiny_shapes):
    main_job = load_tool('main_job')
    # (no data-loader workers: 2 iterations of 4 of the 8 images restart the loader at every other iteration)
    common = ['--data-root', str(tiny_shapes), '--figure-images', '1', '--cfg-options', 'train_cfg.max_iters=2',
              'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False']
    untimed = main_job.main(['--work-dir', str(tmp_path / 'untimed'), '--time-budget', '0', *common])
    timed = main_job.main(['--work-dir', str(tmp_path / 'timed'), *common])
    assert untimed['time_budget_minutes'] is None and untimed['timed_seconds_per_iter'] is None
    assert timed['time_budget_minutes'] == 20 and timed['timed_seconds_per_iter'] > 0
    assert timed['iterations'] == timed['planned_iterations'] == 2
    assert timed['learning_rate'] == untimed['learning_rate'] == 1e-3  # the whole schedule: the config's rate
    assert (f"- schedule: the config's 2 iterations (timed at {timed['timed_seconds_per_iter']:.3f} s/iter here: "
            'they fit the 20-minute budget)') in (tmp_path / 'timed' / 'report.md').read_text()
    # The run seeds everything again when it is built: the timing before it leaves its weights as they were.
    weights = [load_checkpoint_file(str(tmp_path / run / 'iter_2.pth'))['state_dict'] for run in ('untimed', 'timed')]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert timed['metrics'] == untimed['metrics']
    with pytest.raises(SystemExit, match=r'the 0\.01-minute --time-budget leaves no time to train here: .* raise '
                                         r'--time-budget, or pass --iters N to train N iterations whatever they take'):
        main_job.main(['--work-dir', str(tmp_path / 'too_small'), '--time-budget', '0.01', *common])
    assert not (tmp_path / 'too_small').exists()


def _budgeted_run(main_job, tiny_shapes, work_dir, iters, clock, param_scheduler, interval=2, min_gain=2):
    """A real run of ``iters`` of a 12-iteration schedule under KeepToBudgetHook, which re-fits it every
    ``interval`` iterations (from the last 2) to a budget of 1000 s from time 0 as ``clock`` tells the time."""
    cfg = tiny_train_cfg(tiny_shapes, work_dir, iters, batch_size=1)
    cfg.param_scheduler = param_scheduler
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # (as the main job: it tests after training)
    cfg.experiment_name = work_dir.name
    runner = Runner.from_cfg(cfg)
    hook = main_job.KeepToBudgetHook(12, started=0.0, budget_seconds=1000.0, val_images=4, interval=interval,
                                     window=2, min_gain=min_gain, clock=clock)
    runner.register_hook(hook)
    runner.train()
    return runner, hook


def _warmup_and_cosine(warmup, end):
    return [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup),
            dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup, end=end, T_max=end - warmup, eta_min=1e-5)]


def test_a_budgeted_run_refits_its_length_to_the_budget_as_it_trains(tmp_path, tiny_shapes):
    main_job = load_tool('main_job')
    # Planned at 6 of the schedule's 12 (a slow timing): 2 of warm-up, then a cosine decay. At iteration 4
    # the clock says all 12 fit: the run goes on to 12, its cosine decay stretched to end there.
    runner, hook = _budgeted_run(main_job, tiny_shapes, tmp_path / 'longer', 6, clock=lambda: 0.0,
                                 param_scheduler=_warmup_and_cosine(2, 6), interval=4)
    assert runner.iter == 12 and [(r['iteration'], r['iterations']) for r in hook.refits] == [(4, 12)]
    warmup, cosine = runner.param_schedulers
    assert (warmup.begin, warmup.end) == (0, 2) and (cosine.begin, cosine.end, cosine.T_max) == (2, 12, 10)
    # one checkpoint, at the new end
    assert sorted(f for f in os.listdir(tmp_path / 'longer') if f.endswith('.pth')) == ['iter_12.pth']
    # The rate goes on from where it was (iteration i is the cosine's step i - 2; steps 0 and 1 were the old
    # length's), each step scaling its distance to eta_min as the cosine of the new length does: no jump,
    # no stop at the old end (iteration 6) and no climb up a cosine past it.
    lrs = runner.message_hub.get_scalar('train/lr').data[0]
    assert len(lrs) == 12 and lrs[3] - 1e-5 == pytest.approx((1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)
    for i in range(4, 12):
        ratio = (1 + math.cos(math.pi * (i - 2) / 10)) / (1 + math.cos(math.pi * (i - 3) / 10))
        assert lrs[i] - 1e-5 == pytest.approx((lrs[i - 1] - 1e-5) * ratio, rel=1e-6)
    assert lrs[-1] - 1e-5 < 0.03 * (lrs[3] - 1e-5)
    text = next((tmp_path / 'longer').glob('*/*.log')).read_text()
    assert ('[main_job] iteration 4: training at ' in text
            and '12 iterations fit the 16.6667-minute budget: the run now ends at 12 instead of 6' in text)

    # The budget has run out: the run ends at the first re-fit after the warm-up (not at iteration 2, inside
    # it), its checkpoint written there.
    runner, hook = _budgeted_run(main_job, tiny_shapes, tmp_path / 'shorter', 6, clock=lambda: 2000.0,
                                 param_scheduler=_warmup_and_cosine(4, 6))
    assert runner.iter == 4 and [(r['iteration'], r['iterations']) for r in hook.refits] == [(4, 4)]
    assert sorted(f for f in os.listdir(tmp_path / 'shorter') if f.endswith('.pth')) == ['iter_4.pth']
    assert 'only 4 iterations fit' in next((tmp_path / 'shorter').glob('*/*.log')).read_text()
    line, = main_job.schedule_lines(dict(time_budget_minutes=20, planned_iterations=12, timed_seconds_per_iter=1.5,
                                         iterations=4, refits=hook.refits))
    assert line.startswith("- schedule: **4 of the config's 12 iterations**, to fit the 20-minute budget (timed at "
                           "1.500 s/iter here; re-fitted to 4 at iteration 4, training at ")

    # Fewer than min_gain more iterations fit: the length stays, not moved by the timing's noise.
    runner, hook = _budgeted_run(main_job, tiny_shapes, tmp_path / 'kept', 6, clock=lambda: 0.0,
                                 param_scheduler=_warmup_and_cosine(2, 6), min_gain=7)
    assert runner.iter == 6 and hook.refits == []
    # A schedule that ends with the run and has no T_max cannot be re-fitted: kept, and the log says so.
    linear = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
    runner, hook = _budgeted_run(main_job, tiny_shapes, tmp_path / 'linear', 4, clock=lambda: 0.0,
                                 param_scheduler=linear)
    assert runner.iter == 4 and hook.refits == []
    assert ('[main_job] the run keeps its 4 iterations whatever its speed: its LinearLR cannot be re-fitted '
            'to another length as it trains') in next((tmp_path / 'linear').glob('*/*.log')).read_text()


def test_a_budgeted_run_keeps_its_length_on_a_host_whose_speed_alternates():
    main_job = load_tool('main_job')
    # The AVX2 host's training times in the main job of 2026-12-07 (each the mean of 50 iterations, as
    # logged): stretches near 0.72 and near 0.83 s/iter. Its data and timing took 34 s before training.
    means = [0.786, 0.74, 0.757, 0.838, 0.783, 0.803, 0.794, 0.8, 0.78, 0.735, 0.715, 0.758, 0.867, 0.795, 0.736,
             0.693, 0.8, 0.849, 0.853, 0.758, 0.709, 0.755, 0.773, 0.69, 0.753, 0.708]
    times = np.repeat(means, 50)

    def replay(length: int) -> list:
        """The lengths a run planned at ``length`` takes, re-fitted every 50 iterations from the 200th."""
        hook = main_job.KeepToBudgetHook(planned=2000, started=0.0, budget_seconds=1200.0, val_images=200)
        lengths = [length]
        for done in range(200, length, 50):
            length, _ = hook.refit(done, length, times[:done], now=34.0 + times[:done].sum())
            if length != lengths[-1]:
                lengths.append(length)
            if done + 50 >= length:
                break
        return lengths

    # Planned at 1600 from a quick timing (0.655 s/iter), the run is shortened once, to what fits, and stays
    # there: fitted to the last 100 iterations alone it went 1300, 1400, 1300, 1400, 1300.
    assert replay(1600) == [1600, 1300]
    assert 34.0 + times[:1300].sum() + main_job.seconds_after_training(np.median(times), 200) < 1200.0
    # Planned short from a slow timing, it still lengthens itself, once.
    assert replay(700) == [700, 1300]
    # A host that turns slower for good from iteration 600 still shortens the run, to end inside the budget.
    times[600:] *= 1.3
    *_, length = replay(1600)
    assert length < 1300
    assert 34.0 + times[:length].sum() + main_job.seconds_after_training(np.median(times[-100:]), 200) < 1200.0


def test_benchmark_shapes_trains_each_seed_reuses_its_runs_and_refuses_others(tmp_path, tiny_shapes):
    bench = load_tool('benchmark_shapes')
    args = ['--models', 'rfcn', '--iters', '2', '--data-root', str(tiny_shapes), '--work-dir', str(tmp_path)]
    reports = bench.main(args + ['--seed', '0', '1'])
    assert [reports[s]['rfcn']['seed'] for s in (0, 1)] == [0, 1]
    report_path = tmp_path / 'seed1' / 'rfcn' / 'report.json'
    assert json.loads(report_path.read_text()) == reports[1]['rfcn']
    text = (tmp_path / 'benchmark.md').read_text()
    assert 'Seed 0:' in text and 'Seed 1:' in text and '| Model | seed 0 | seed 1 | mean |' in text
    mtime = report_path.stat().st_mtime
    # --collect-only reads what is there and trains nothing: seed 2 was never run.
    summary = (tmp_path / 'benchmark.md').read_text()
    collected = bench.main(args + ['--seed', '0', '1', '2', '--collect-only'])
    assert collected[2] == {'rfcn': None} and collected[1]['rfcn'] == reports[1]['rfcn']
    assert not (tmp_path / 'seed2').exists() and (tmp_path / 'benchmark.md').read_text() == summary
    with pytest.raises(SystemExit, match=r'none of the asked runs .seeds \[2\].*without --collect-only'):
        bench.main(args + ['--seed', '2', '--collect-only'])
    with pytest.raises(SystemExit, match=r'--work-dir .*nowhere does not exist; --collect-only reads'):
        bench.main(args[:-1] + [str(tmp_path / 'nowhere'), '--collect-only'])
    with pytest.raises(SystemExit, match=r'--work-dir .*benchmark.md is a file, not a folder; --collect-only'):
        bench.main(args[:-1] + [str(tmp_path / 'benchmark.md'), '--collect-only'])
    assert bench.main(args + ['--seed', '1'])[1]['rfcn'] == reports[1]['rfcn']  # reused, not retrained
    assert report_path.stat().st_mtime == mtime
    assert 'Shapes dataset (seed 1), 8 train / 4 val images' in (tmp_path / 'benchmark.md').read_text()
    # Asked for a dataset of another seed, a run on this one is refused (before any data is generated).
    with pytest.raises(SystemExit, match=r'report of another run: data_seed 1 \(asked: 0\)'):
        bench.main(args + ['--seed', '1', '--data-seed', '0'])
    # A run of another schedule or of other overrides in the same folder is refused, never reused.
    with pytest.raises(SystemExit, match=r'report of another run: iterations 2 \(asked: 3\).*another --work-dir'):
        bench.main(args[:2] + ['--iters', '3'] + args[4:] + ['--seed', '1'])
    (tmp_path / 'seed1' / 'acouplenet-att0.1').mkdir()
    shutil.copy(report_path, tmp_path / 'seed1' / 'acouplenet-att0.1' / 'report.json')
    with pytest.raises(SystemExit, match="config 'configs/shapes/rfcn.*cfg_options {} .asked: "
                                         "{'model.loss_attention.loss_weight': 0.1}"):
        bench.main(['--models', 'acouplenet-att0.1'] + args[2:] + ['--seed', '1'])
    # Nor one trained on other data in the same folder (generated again since): its fingerprint differs.
    seed0_report = tmp_path / 'seed0' / 'rfcn' / 'report.json'
    other_data = json.loads(seed0_report.read_text())
    other_data['dataset']['sha256'] = '0' * 64
    seed0_report.write_text(json.dumps(other_data))
    with pytest.raises(SystemExit, match=r'dataset sha256 0000000000000000 \(the data there now: [0-9a-f]{16}\)'):
        bench.main(args + ['--seed', '0'])
    # Nor one trained at another learning rate: a report from before shortened runs raised it records none,
    # and trained 2 of the config's 2000 iterations at the config's rate, half of what they train at now.
    old_rate = json.loads(report_path.read_text())
    assert old_rate.pop('learning_rate') == pytest.approx(2e-3)
    report_path.write_text(json.dumps(old_rate))
    with pytest.raises(SystemExit, match=r'report of another run: learning_rate 0\.001 \(asked: 0\.002\)'):
        bench.main(args + ['--seed', '1'])

    # The seed table's paired gaps: each model minus CoupleNet at the same seed, then their mean and its
    # standard error (sample standard deviation of the gaps, 4.24, over sqrt(2)).
    def with_ap(report, ap):
        return dict(report, metrics=dict(report['metrics'], bbox_mAP=ap))

    runs = {0: {'couplenet': with_ap(reports[0]['rfcn'], 0.35), 'rfcn': with_ap(reports[0]['rfcn'], 0.30)},
            1: {'couplenet': with_ap(reports[1]['rfcn'], 0.32), 'rfcn': with_ap(reports[1]['rfcn'], 0.33)}}
    rows = bench.seed_table(runs, [0, 1], ['couplenet', 'rfcn']).splitlines()
    assert rows[0] == '| Model | seed 0 | seed 1 | mean | paired gap to CoupleNet |'
    assert rows[2] == '| CoupleNet | 35.0 | 32.0 | 33.5 | - |'
    assert rows[3] == '| R-FCN (local only) | 30.0 | 33.0 | 31.5 | -5.0, +1.0 (mean -2.0, standard error 3.0) |'
    rows = bench.seed_table({0: runs[0]}, [0], ['couplenet', 'rfcn']).splitlines()
    assert rows[3] == '| R-FCN (local only) | 30.0 | 30.0 | -5.0 (mean -5.0) |'  # one seed: no spread
    # A missing run is a '-', left out of its model's mean and of the paired gaps, which say over how many.
    runs[2] = {'couplenet': with_ap(reports[1]['rfcn'], 0.40), 'rfcn': None}
    rows = bench.seed_table(runs, [0, 1, 2], ['couplenet', 'rfcn']).splitlines()
    assert rows[2] == '| CoupleNet | 35.0 | 32.0 | 40.0 | 35.7 | - |'
    assert rows[3] == ('| R-FCN (local only) | 30.0 | 33.0 | - | 31.5 over 2 seeds | -5.0, +1.0, - '
                       '(mean -2.0 over 2 seeds, standard error 3.0) |')
    rows = bench.seed_table({0: runs[0], 2: runs[2]}, [0, 2], ['couplenet', 'rfcn']).splitlines()
    assert rows[3] == '| R-FCN (local only) | 30.0 | - | 30.0 over 1 seed | -5.0, - (mean -5.0 over 1 seed) |'


def test_benchmark_shapes_variants_reach_the_model_as_main_job_passes_them():
    """Each variant's overrides, merged as main_job merges ``--cfg-options``, change the built model."""
    from mmdet.registry import MODELS
    bench = load_tool('benchmark_shapes')

    def built(key, with_overrides=True):
        _, config, options = bench.MODELS[key]
        cfg = Config.fromfile(str(REPO / config))
        if with_overrides:
            cfg.merge_from_dict(options)
        return MODELS.build(cfg.model)

    assert built('acouplenet-s16', with_overrides=False).backbone.attention_stages == (0, 1, 2)  # the paper's
    for key, stage, layer in (('acouplenet-s4', 0, 'layer1'), ('acouplenet-s8', 1, 'layer2'),
                              ('acouplenet-s16', 2, 'layer3')):
        backbone = built(key).backbone
        assert backbone.attention_stages == (stage,) and list(backbone.attention_blocks) == [layer]
    assert built('acouplenet-att0.1').loss_attention.loss_weight == 0.1
    # The paper's Table I: CoupleNet ('conv' + 'sum') and the eight other pairs.
    for norm in ('none', 'l2', 'conv'):
        for coupling in ('sum', 'prod', 'max'):
            key = 'couplenet' if (norm, coupling) == ('conv', 'sum') else f'couplenet-{norm}-{coupling}'
            head = built(key).roi_head.bbox_head
            assert (head.normalization, head.coupling) == (norm, coupling) and head.with_local and head.with_global


def test_main_job_reuses_the_dataset_whatever_its_seed_unless_another_data_seed_is_asked(tmp_path, capsys):
    main_job = load_tool('main_job')
    root = str(tmp_path / 'shapes')
    assert main_job.ensure_dataset(root, num_train=2, num_val=1, seed=3)['config']['seed'] == 3
    generated = fingerprint(root)
    for seed in (None, 3):  # no seed asked, or this one: the dataset there, as it is
        assert main_job.ensure_dataset(root, seed=seed)['config']['seed'] == 3 and fingerprint(root) == generated
    manifest = main_job.ensure_dataset(root, num_train=2, num_val=1, seed=4)
    assert manifest['config']['seed'] == 4 and fingerprint(root) != generated
    assert 'has seed 3 (asked: 4)' in capsys.readouterr().out
    assert main_job.parse_args(['--data-seed', '4', '--seed', '1']).data_seed == 4


def test_main_job_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    main_job = load_tool('main_job')
    (tmp_path / 'shapes').mkdir()
    (tmp_path / 'shapes' / 'something.txt').write_text('not a dataset')
    with pytest.raises(SystemExit, match=r'shapes exists but holds no complete generated dataset \(manifest\.json '
                                         r'is missing\); move it away or pass another --data-root'):
        main_job.main(['--data-root', str(tmp_path / 'shapes'), '--work-dir', str(tmp_path / 'work')])
    assert os.listdir(tmp_path / 'shapes') == ['something.txt'] and not (tmp_path / 'work').exists()


def test_main_job_refuses_bad_counts_and_seeds_and_a_dataset_with_an_empty_split_before_training(tmp_path, capsys):
    main_job, bench = load_tool('main_job'), load_tool('benchmark_shapes')
    # Every count of every tool (runtime.count_arg): 0 is not "the default" (--iters 0 once trained the
    # config's 2000 iterations), a negative --paired is not "no pairing", --retries 0 is not a download.
    counts = [('main_job', [], flag, 1) for flag in ('--iters', '--num-train', '--num-val', '--figure-images')]
    counts += [('benchmark_shapes', [], '--iters', 1),
               ('attention_stats', ['config.py', 'ckpt.pth'], '--max-images', 1),
               ('benchmark_roi_layers', [], '--runs', 1), ('benchmark_roi_layers', [], '--threads', 1),
               ('model_zoo', ['download', 'name'], '--retries', 1)]
    counts += [('benchmark_speed', [], flag, 1) for flag in ('--shape', '--runs', '--threads')]
    # benchmark_speed --rounds 0 is the paired timing alone.
    counts += [('benchmark_speed', [], flag, 0) for flag in ('--warmup', '--paired', '--rounds')]
    for tool, argv, flag, least in counts:
        values = [str(least - 1)] * (2 if flag == '--shape' else 1)
        with pytest.raises(SystemExit):
            load_tool(tool).main(argv + [flag] + values)
        err = capsys.readouterr().err
        assert f'argument {flag}: must be at least {least}, got {least - 1}' in err, (tool, err)
    with pytest.raises(SystemExit):
        load_tool('model_zoo').main(['download', 'name', '--timeout', '0'])
    assert '--timeout must be more than 0 seconds, got 0.0' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_job.parse_args(['--iters', '2k'])
    assert "argument --iters: '2k' is not an integer" in capsys.readouterr().err
    # numpy's seed range (a seed of -1 failed in mmengine's set_random_seed after the data step)
    for tool, argv, flag in ((main_job, ['--seed', '-1'], '--seed'),
                             (main_job, ['--data-seed', str(2**32)], '--data-seed'),
                             (bench, ['--seed', '0', '-1'], '--seed/--seeds'),
                             (bench, ['--data-seed', 'x'], '--data-seed')):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        err = capsys.readouterr().err
        assert f'argument {flag}: ' in err, err
        assert ("is out of range: seeds run from 0 to 2**32 - 1" in err or "'x' is not an integer" in err), err
    # A run that fails is named, without a traceback of the benchmark.
    (tmp_path / 'not_data').mkdir()
    (tmp_path / 'not_data' / 'notes.txt').write_text('keep')
    with pytest.raises(SystemExit, match=r'error: R-FCN \(local only\), seed 0 failed \(exit status 1; its output is '
                                         r'above, its logs under .*rfcn\); the runs finished before it are kept'):
        bench.main(['--models', 'rfcn', '--iters', '1', '--data-root', str(tmp_path / 'not_data'),
                    '--work-dir', str(tmp_path / 'bench')])
    # A dataset generated elsewhere (tools/generate_shapes.py --num-val 0) is refused before any training.
    from projects.acouplenet.shapes import ShapesConfig, generate
    root = tmp_path / 'shapes'
    generate(str(root), ShapesConfig(num_train=2, num_val=0, seed=0))
    with pytest.raises(SystemExit, match=r'has no val images; generate one with images in both splits: '
                                         r'--regenerate'):
        main_job.main(['--data-root', str(root), '--work-dir', str(tmp_path / 'work')])
    assert not (tmp_path / 'work').exists()


def test_tools_name_a_missing_config_or_checkpoint(tmp_path, capsys):
    train, test, main_job = load_tool('train'), load_tool('test'), load_tool('main_job')
    missing = str(tmp_path / 'missing.py')
    with pytest.raises(SystemExit, match=f'config {missing} not found'):
        train.main([missing])
    with pytest.raises(SystemExit, match=r'--resume .*nothing\.pth: checkpoint not found \(--resume without a value'):
        train.main([str(SHAPES_CONFIG), '--resume', str(tmp_path / 'nothing.pth')])
    with pytest.raises(SystemExit, match=f'config {missing} not found'):
        test.main([missing, str(tmp_path / 'nothing.pth')])
    with pytest.raises(SystemExit, match=r'checkpoint .*nothing\.pth not found'):
        test.main([str(SHAPES_CONFIG), str(tmp_path / 'nothing.pth')])
    with pytest.raises(SystemExit):
        main_job.parse_args(['--config', 'configs/shapes/missing.py'])
    assert '--config configs/shapes/missing.py: not found' in capsys.readouterr().err


def test_main_job_refuses_a_config_not_for_the_shapes_data_before_generating_it(tmp_path):
    main_job = load_tool('main_job')
    for config, reads in (('configs/acouplenet/ablations/acouplenet_r101_4xb2-12e_coco.py',
                           'annotations/instances_valminusminival2014.json'),
                          ('configs/acouplenet/acouplenet_r101_1xb2-ms-110k_voc0712.py',
                           r'a ConcatDataset \(no single ann_file\)')):
        with pytest.raises(SystemExit, match=f'--config {config} reads {reads} for its train_dataloader, not the '
                                             r"shapes dataset's annotations/instances_train\.json: the main job "
                                             r'trains the configs under configs/shapes/'):
            main_job.main(['--config', config, '--data-root', str(tmp_path / 'data'),
                           '--work-dir', str(tmp_path / 'work')])
    assert not (tmp_path / 'data').exists() and not (tmp_path / 'work').exists()


def test_train_names_a_cut_checkpoint_to_resume_from_before_building_anything(tmp_path):
    """An explicit --resume file and the work dir's latest checkpoint (--resume without a value) are read
    before the runner is built; a cut one is named with what is wrong and left as it is."""
    train = load_tool('train')
    whole = tmp_path / 'whole.pth'
    torch.save(dict(state_dict={'w': torch.zeros(256, 256)}, meta=dict(iter=2)), whole)
    cut = tmp_path / 'work' / 'iter_4.pth'
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[:len(whole.read_bytes()) // 2])
    size = cut.stat().st_size
    with pytest.raises(SystemExit, match=r'cannot resume from --resume .*iter_4\.pth: .*iter_4\.pth is not a readable '
                                         r'PyTorch checkpoint \(empty, truncated or corrupt.*--resume PATH'):
        train.main([str(SHAPES_CONFIG), '--resume', str(cut), '--work-dir', str(tmp_path / 'other')])
    (cut.parent / 'last_checkpoint').write_text(str(cut))
    with pytest.raises(SystemExit, match=r'cannot resume from .*iter_4\.pth, the latest checkpoint of the work dir '
                                         r'\(named in .*last_checkpoint\): .*truncated'):
        train.main([str(SHAPES_CONFIG), '--resume', '--work-dir', str(cut.parent)])
    (cut.parent / 'last_checkpoint').write_text(str(tmp_path / 'work' / 'iter_6.pth'))
    with pytest.raises(SystemExit, match=r'iter_6\.pth, the latest checkpoint .*: checkpoint not found'):
        train.main([str(SHAPES_CONFIG), '--resume', '--work-dir', str(cut.parent)])
    # A config that resumes by itself is named as such, not as a --resume the user never passed.
    with pytest.raises(SystemExit, match=r'cannot resume from load_from=.*iter_4\.pth of the config \(resume=True\): '
                                         r'.*truncated'):
        train.main([str(SHAPES_CONFIG), '--work-dir', str(tmp_path / 'other'),
                    '--cfg-options', 'resume=True', f'load_from={cut}'])
    assert cut.stat().st_size == size and not (tmp_path / 'other').exists()
    train.check_resume_checkpoint(Config(dict(work_dir=str(cut.parent), resume=True, load_from=str(whole))))
    train.check_resume_checkpoint(Config(dict(work_dir=str(tmp_path / 'new'), resume=True)))  # starts afresh
    assert sorted(p.name for p in cut.parent.iterdir()) == ['iter_4.pth', 'last_checkpoint']
    # A whole checkpoint of another model: named with what does not fit once the model is built, where
    # mmengine would warn and then stop on the optimizer state's parameter groups.
    with pytest.raises(SystemExit, match=r'cannot resume: checkpoint .*whole\.pth does not fit the model of .*shapes'
                                         r'\.py \(0 weights match\):\n(.|\n)*not in the model: w\n'):
        train.main([str(SHAPES_CONFIG), '--resume', str(whole), '--work-dir', str(tmp_path / 'foreign')])


def test_loss_decreases_when_overfitting_a_few_images(tmp_path, tiny_shapes):
    cfg = tiny_train_cfg(tiny_shapes, tmp_path, iters=40, random_flip=False)
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]
    cfg.train_cfg.val_interval = 1000  # no evaluation
    cfg.experiment_name = 'overfit'
    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = runner.message_hub.get_scalar('train/loss').data[0].tolist()
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)


def test_each_run_in_one_process_logs_its_scalars_in_its_own_work_dir(tmp_path, tiny_shapes):
    """mmengine hands a later runner the visualizer made first in the process (here a DetInferencer's, which
    saves nowhere), so without its own visualizer a run's vis_data/scalars.json is lost or lands elsewhere."""
    from mmdet.registry import VISUALIZERS
    config = _tiny_config_file(tmp_path, tiny_shapes, iters=1)
    VISUALIZERS.build(dict(Config.fromfile(str(config)).visualizer, save_dir=None))  # DetInferencer's way
    train = load_tool('train')
    for run in ('first', 'second'):
        train.main([str(config), '--work-dir', str(tmp_path / run)])
        assert [s['iter'] for s in _scalars(tmp_path / run) if 'loss' in s] == [1], run


@HOOKS.register_module(force=True)
class _StopAfter(Hook):
    """Simulates a killed run: raises right after the checkpoint of iteration ``n`` is written."""
    priority = 'LOWEST'

    def __init__(self, n):
        self.n = n

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.n:
            raise KeyboardInterrupt(f'stopped after iteration {self.n}')


def _resume_cfg(data_root, work_dir, name):
    cfg = tiny_train_cfg(data_root, work_dir, iters=6, random_flip=False)
    cfg.default_hooks.checkpoint.interval = 3
    cfg.experiment_name = name
    return cfg


def test_resume_ends_like_an_uninterrupted_run(tmp_path, tiny_shapes):
    full = Runner.from_cfg(_resume_cfg(tiny_shapes, tmp_path / 'full', 'full'))
    full.train()
    full_weights = {k: v.clone() for k, v in full.model.state_dict().items()}
    full_metrics = full.test()

    cfg = _resume_cfg(tiny_shapes, tmp_path / 'cut', 'cut')
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='_StopAfter', n=4)]
    with pytest.raises(KeyboardInterrupt):
        Runner.from_cfg(cfg).train()
    assert (tmp_path / 'cut' / 'iter_3.pth').is_file() and not (tmp_path / 'cut' / 'iter_6.pth').exists()

    # torch >= 2.6 loads weights_only: this resume exercises the allow-list of mmengine's types, as does
    # tools/train.py's check of the work dir's latest checkpoint (--resume without a value).
    train = load_tool('train')
    path, loaded = train.check_resume_checkpoint(Config(dict(work_dir=str(tmp_path / 'cut'), resume=True)))
    cfg = _resume_cfg(tiny_shapes, tmp_path / 'cut', 'resumed')
    cfg.resume = True
    cfg.load_from = str(tmp_path / 'cut' / 'iter_3.pth')
    resumed = Runner.from_cfg(cfg)
    assert path == cfg.load_from
    train.check_resume_fits(resumed, path, loaded, 'the config')  # the model's own checkpoint fits
    resumed.train()
    assert resumed.iter == 6
    weights = resumed.model.state_dict()
    assert weights.keys() == full_weights.keys()
    for key, value in full_weights.items():
        assert torch.equal(value, weights[key]), key
    assert resumed.test() == full_metrics


def test_dist_train_two_cpu_processes_stay_in_sync_and_evaluate(tmp_path, tiny_shapes):
    config = _tiny_config_file(tmp_path, tiny_shapes, iters=4, extra='''
custom_imports = dict(imports=['projects.acouplenet', 'tests.dist_helpers'], allow_failed_imports=False)
custom_hooks = [dict(type='NonFiniteLossHook'), dict(type='RNGStateHook'), dict(type='SaveRankWeightsHook')]
''')
    # CPU processes over gloo also on a GPU machine (two NCCL ranks would need two GPUs).
    env = dict(os.environ, PYTHON=PYTHON, PORT=str(29500 + os.getpid() % 1000), OMP_NUM_THREADS='1',
               CUDA_VISIBLE_DEVICES='')
    work_dir = tmp_path / 'ddp'
    _run(['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir)], env=env)
    ranks = [torch.load(work_dir / f'rank{r}_weights.pth') for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 100
    # DDP keeps the parameters equal; BN running statistics are per rank (mmengine's broadcast_buffers=False).
    for key in ranks[0]:
        if 'running_' not in key and 'num_batches_tracked' not in key:
            assert torch.equal(ranks[0][key], ranks[1][key]), key
    initial = torch.load(work_dir / 'rank0_initial_weights.pth')
    assert any(not torch.equal(initial[k], ranks[0][k]) for k in initial), 'training did not change the weights'
    assert any('coco/bbox_mAP' in row for row in _scalars(work_dir))


def test_mim_train_test_and_mmdet_analysis_tools_from_the_repo_root(tmp_path, tiny_shapes, mim):
    config = _tiny_config_file(tmp_path, tiny_shapes, iters=2)
    # mim runs mmdet's own tools/train.py and sets no PYTHONPATH: the installed package must be found.
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    work_dir = tmp_path / 'mim'
    _run([mim, 'train', 'mmdet', str(config), '--gpus', '0', '--work-dir', str(work_dir)], env=env)
    assert (work_dir / 'iter_2.pth').is_file()
    # --show-dir: mmdet's DetVisualizationHook draws every test image's detections (mim passes it through).
    results = tmp_path / 'results.pkl'
    result = _run([mim, 'test', 'mmdet', str(config), '--checkpoint', str(work_dir / 'iter_2.pth'), '--gpus', '0',
                   '--work-dir', str(tmp_path / 'mim_test'), '--show-dir', 'vis', '--out', str(results)], env=env)
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
    drawn = list((tmp_path / 'mim_test').glob('*/vis/*.jpg'))
    assert len(drawn) == 4, drawn  # the tiny val split's four images
    # --tta: mmdet's flip TTA pipeline with the configs' UnflippedViewTTAModel (found through custom_imports).
    result = _run([mim, 'test', 'mmdet', str(config), '--checkpoint', str(work_dir / 'iter_2.pth'), '--gpus', '0',
                   '--work-dir', str(tmp_path / 'mim_tta'), '--tta'], env=env)
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
    assert 'Cannot find ``tta_model``' not in result.stdout + result.stderr
    assert 'Cannot find ``tta_pipeline``' in result.stdout + result.stderr

    # mmdet's analysis tools on the run: best and worst images, confusion matrix, training time from the log.
    _run([mim, 'run', 'mmdet', 'analyze_results', str(config), str(results), str(tmp_path / 'analysis'), '--topk', '1'],
         env=env)
    assert len(list((tmp_path / 'analysis').glob('good/*.jpg'))) == 1
    assert len(list((tmp_path / 'analysis').glob('bad/*.jpg'))) == 1
    _run([mim, 'run', 'mmdet', 'confusion_matrix', str(config), str(results), str(tmp_path / 'analysis')], env=env)
    assert (tmp_path / 'analysis' / 'confusion_matrix.png').is_file()
    scalars = next(work_dir.glob('*/vis_data/scalars.json'))
    log = _run([mim, 'run', 'mmdet', 'analyze_logs', 'cal_train_time', str(scalars)], env=env)
    assert 'average iter time' in log.stdout


def test_amp_on_cpu_says_why_not(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('a CUDA machine runs AMP')
    train = load_tool('train')
    from projects.acouplenet.runtime import AmpUnavailableError
    with pytest.raises(AmpUnavailableError, match='--amp needs a CUDA GPU.*Drop --amp'):
        train.main([str(SHAPES_CONFIG), '--amp', '--work-dir', str(tmp_path)])


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, tiny_shapes):
    cfg = tiny_train_cfg(tiny_shapes, tmp_path, iters=6, random_flip=False)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.experiment_name = 'nan'
    runner = Runner.from_cfg(cfg)
    real_forward = runner.model.loss_attention.forward
    calls = []

    def poisoned(*args, **kwargs):
        losses = real_forward(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # iteration 3
            losses['loss_att_s4'] = losses['loss_att_s4'] * float('nan')
        return losses

    runner.model.loss_attention.forward = poisoned
    from projects.acouplenet.hooks import NonFiniteLossError
    with pytest.raises(NonFiniteLossError, match=r'non-finite loss at iteration 3: .*loss_att_s4=nan.*iter_2\.pth'):
        runner.train()
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_2.pth']
    checkpoint = torch.load(tmp_path / 'iter_2.pth')
    assert all(torch.isfinite(v).all() for v in checkpoint['state_dict'].values() if v.is_floating_point())
