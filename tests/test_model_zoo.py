"""Model zoo: verified, atomic, retried downloads from a local HTTP server; publish; ResNet conversion;
`mim download` from the project installed as a package, `mim search` from its editable install."""
import hashlib
import http.server
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from mmdet.registry import MODELS
from projects.acouplenet import model_zoo

from .conftest import REPO, SHAPES_CONFIG, PickledCode, load_tool, shapes_test_options

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """/good.pth: the file; /tampered.pth: one byte changed; /flaky.pth: cut mid-way on the first request
    of each test, whole afterwards; /cut.pth: always cut mid-way; the paths in ``files``: their bytes."""
    requests = []
    files = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        body = type(self).files.get(self.path, PAYLOAD)
        if self.path == '/tampered.pth':
            body = PAYLOAD[:100] + bytes([PAYLOAD[100] ^ 1]) + PAYLOAD[101:]
        elif self.path not in ('/good.pth', '/flaky.pth', '/cut.pth', *type(self).files):
            self.send_error(404)
            return
        cut = self.path == '/cut.pth' or (self.path == '/flaky.pth' and type(self).requests.count('/flaky.pth') == 1)
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if cut else body)
        self.wfile.flush()
        if cut:
            self.close_connection = True


@pytest.fixture()
def server():
    _Handler.requests, _Handler.files = [], {}
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith('.part')]


def test_good_download_is_verified_and_placed_atomically(server, tmp_path):
    dest = tmp_path / 'ckpt' / 'model.pth'
    assert model_zoo.download(f'{server}/good.pth', str(dest), SHA) == str(dest)
    assert dest.read_bytes() == PAYLOAD and _leftovers(dest.parent) == []
    # an existing verified file is not fetched again
    before = len(_Handler.requests)
    model_zoo.download(f'{server}/good.pth', str(dest), SHA)
    assert len(_Handler.requests) == before


def test_tampered_download_is_deleted_and_reported(server, tmp_path):
    dest = tmp_path / 'model.pth'
    with pytest.raises(model_zoo.ChecksumError, match='does not match the expected .*deleted'):
        model_zoo.download(f'{server}/tampered.pth', str(dest), SHA, retries=3)
    assert not dest.exists() and _leftovers(tmp_path) == []
    assert _Handler.requests.count('/tampered.pth') == 1  # a wrong file is not retried


def test_cut_connection_is_retried(server, tmp_path):
    dest = tmp_path / 'model.pth'
    model_zoo.download(f'{server}/flaky.pth', str(dest), SHA, retries=3, backoff=0)
    assert dest.read_bytes() == PAYLOAD and _Handler.requests.count('/flaky.pth') == 2


def test_connection_always_cut_leaves_nothing(server, tmp_path):
    dest = tmp_path / 'model.pth'
    with pytest.raises(model_zoo.DownloadError, match='after 2 attempts.*nothing was written'):
        model_zoo.download(f'{server}/cut.pth', str(dest), SHA, retries=2, backoff=0)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_a_missing_file_is_reported_at_once_not_retried(server, tmp_path):
    with pytest.raises(model_zoo.DownloadError, match=r'missing\.pth: HTTP 404 .*check the URL. Nothing was written'):
        model_zoo.download(f'{server}/missing.pth', str(tmp_path / 'model.pth'), SHA, retries=3, backoff=0)
    assert _Handler.requests.count('/missing.pth') == 1 and os.listdir(tmp_path) == []


def _index(tmp_path, entries):
    (tmp_path / 'metafile.yml').write_text(yaml.safe_dump({'Models': entries}))
    (tmp_path / 'model-index.yml').write_text(yaml.safe_dump({'Import': ['metafile.yml']}))
    return str(tmp_path / 'model-index.yml')


def test_download_by_model_name(server, tmp_path, capsys):
    index = _index(tmp_path, [
        dict(Name='good', Config='configs/x.py', Weights=f'{server}/good.pth', Metadata={'Weights SHA256': SHA}),
        dict(Name='unhashed', Config='configs/x.py', Weights=f'{server}/good.pth'),
        dict(Name='paper-only', Config='configs/x.py'),
    ])
    path = model_zoo.download_model('good', str(tmp_path / 'dl'), index)
    assert Path(path).read_bytes() == PAYLOAD
    load_tool('model_zoo').main(['--model-index', index, 'download', 'good', '--dest', str(tmp_path / 'cli')])
    assert f'{tmp_path / "cli" / "good.pth"} (sha256 verified)' in capsys.readouterr().out
    assert (tmp_path / 'cli' / 'good.pth').read_bytes() == PAYLOAD
    with pytest.raises(model_zoo.ChecksumError, match='no "Weights SHA256"'):
        model_zoo.download_model('unhashed', str(tmp_path / 'dl'), index)
    with pytest.raises(model_zoo.DownloadError, match='no released checkpoint'):
        model_zoo.download_model('paper-only', str(tmp_path / 'dl'), index)
    with pytest.raises(KeyError, match=r"model-index.yml. Did you mean good\? Known models: .*good"):
        model_zoo.download_model('goood', str(tmp_path / 'dl'), index)


def test_repo_model_index_lists_every_paper_config():
    models = model_zoo.load_models()
    configs = {m['Config'] for m in models.values()}
    expected = {str(p.relative_to(REPO)) for p in (REPO / 'configs' / 'acouplenet').rglob('*.py')}
    assert configs == expected
    assert models['acouplenet_r101_8xb2-ms-180k_coco']['Results'][0]['Metrics']['box AP'] == 35.4
    assert models['acouplenet_r101_1xb2-ms-110k_voc0712']['Results'][0]['Metrics']['mAP'] == 82.6
    for entry in models.values():
        assert (REPO / entry['Config']).is_file()
        assert bool(entry.get('Weights')) == bool((entry.get('Metadata') or {}).get('Weights SHA256'))


def _checkpoint_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_checkpoints_named_by_url_load_safely(server, tmp_path, monkeypatch):
    """mmengine loads a URL (load_from, init_cfg, init_detector, DetInferencer) through torch.hub with
    weights_only=False; with the project imported it is downloaded into torch hub's cache and loaded safely,
    and the torchvision:// style names that resolve to a URL go the same way."""
    import mmengine.runner.checkpoint as mmengine_checkpoint
    from mmengine.runner import CheckpointLoader, load_checkpoint
    from projects.acouplenet.safe_loading import RefusedCheckpointError
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    marker = tmp_path / 'code_ran'
    _Handler.files = {'/weights.pth': _checkpoint_bytes({'state_dict': {'weight': torch.full((1, 1), 3.0),
                                                                        'bias': torch.ones(1)}}),
                      '/evil.pth': _checkpoint_bytes({'state_dict': {}, 'meta': PickledCode(marker)})}

    model = torch.nn.Linear(1, 1)
    load_checkpoint(model, f'{server}/weights.pth', map_location='cpu')
    assert model.weight.item() == 3.0 and model.bias.item() == 1.0
    assert (cache / 'weights.pth').read_bytes() == _Handler.files['/weights.pth'] and _leftovers(cache) == []
    CheckpointLoader.load_checkpoint(f'{server}/weights.pth', map_location='cpu')
    assert _Handler.requests.count('/weights.pth') == 1  # the cached file is loaded again

    # A cached copy that is no checkpoint (cut where a server sent no length) is deleted when it fails to load.
    (cache / 'damaged.pth').write_bytes(_Handler.files['/weights.pth'][:1000])
    _Handler.files['/damaged.pth'] = _Handler.files['/weights.pth']
    with pytest.raises(ValueError, match=r'damaged\.pth is not a readable PyTorch checkpoint .*It came from '
                                         r'.*/damaged\.pth; the cached copy was deleted'):
        CheckpointLoader.load_checkpoint(f'{server}/damaged.pth', map_location='cpu')
    assert not (cache / 'damaged.pth').exists()
    assert 'bias' in CheckpointLoader.load_checkpoint(f'{server}/damaged.pth', map_location='cpu')['state_dict']

    monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models', lambda: {'evilnet': f'{server}/evil.pth'})
    for name in (f'{server}/evil.pth', 'torchvision://evilnet'):
        with pytest.raises(RefusedCheckpointError, match=rf'{cache}/evil\.pth holds pickled objects that safe '
                                                         rf'loading refuses \(.*GLOBAL posix\.system'):
            CheckpointLoader.load_checkpoint(name, map_location='cpu')
    assert not marker.exists()


def test_a_url_the_model_index_lists_is_checked_against_its_sha256(server, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    weights = _checkpoint_bytes({'state_dict': {'w': torch.arange(4.)}})
    _Handler.files = {'/listed.pth': weights}
    monkeypatch.setattr(model_zoo, 'MODEL_INDEX', _index(tmp_path, [
        dict(Name='listed', Weights=f'{server}/listed.pth',
             Metadata={'Weights SHA256': hashlib.sha256(weights).hexdigest()}),
        dict(Name='tampered', Weights=f'{server}/tampered.pth', Metadata={'Weights SHA256': SHA})]))
    with pytest.raises(model_zoo.ChecksumError, match='does not match the expected .*deleted'):
        model_zoo.load_url(f'{server}/tampered.pth')
    assert not (cache / 'tampered.pth').exists() and _leftovers(cache) == []
    assert torch.equal(model_zoo.load_url(f'{server}/listed.pth')['state_dict']['w'], torch.arange(4.))
    # A cached copy that no longer hashes right (cut by hand, say) is fetched again, not loaded.
    (cache / 'listed.pth').write_bytes(weights[:100])
    assert torch.equal(model_zoo.load_url(f'{server}/listed.pth')['state_dict']['w'], torch.arange(4.))
    assert _Handler.requests.count('/listed.pth') == 2 and (cache / 'listed.pth').read_bytes() == weights
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('not a folder')
    monkeypatch.setenv('TORCH_HOME', str(blocker / 'torch'))
    with pytest.raises(ValueError, match=r"torch hub's checkpoint cache \(TORCH_HOME moves it\) .*notes\.txt.* in "
                                         r"the way; name a folder"):
        model_zoo.load_url(f'{server}/listed.pth')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    # The package folder copied without its index (projects/.mim) still loads URLs.
    monkeypatch.setattr(model_zoo, 'MODEL_INDEX', str(tmp_path / 'nowhere' / 'model-index.yml'))
    assert torch.equal(model_zoo.load_url(f'{server}/listed.pth')['state_dict']['w'], torch.arange(4.))


def test_the_tools_and_det_inferencer_take_a_checkpoint_url(server, shapes_checkpoint, shapes_images,
                                                            tiny_shapes, tmp_path, monkeypatch):
    """As mmdet's own test.py does: tools/test.py, tools/demo.py and DetInferencer take a checkpoint by URL,
    downloaded once into torch hub's cache."""
    from mmdet.apis import DetInferencer
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    _Handler.files = {'/shapes.pth': shapes_checkpoint.read_bytes()}
    url = f'{server}/shapes.pth'
    figure = load_tool('demo').main(shapes_images[:1] + ['--config', str(SHAPES_CONFIG), '--checkpoint', url,
                                                         '--out', str(tmp_path / 'fig.png')])
    assert Path(figure).stat().st_size > 10_000
    metrics = load_tool('test').main([
        str(SHAPES_CONFIG), url, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
        *shapes_test_options(tiny_shapes)])
    assert 'coco/bbox_mAP' in metrics
    result = DetInferencer(model=str(SHAPES_CONFIG), weights=url, device='cpu', show_progress=False)(shapes_images[0])
    assert len(result['predictions'][0]['bboxes']) > 0
    assert _Handler.requests.count('/shapes.pth') == 1
    with pytest.raises(SystemExit, match=r'^error: .*/missing\.pth: HTTP 404 .*check the URL'):
        load_tool('demo').main(shapes_images[:1] + ['--config', str(SHAPES_CONFIG), '--checkpoint',
                                                    f'{server}/missing.pth', '--out', str(tmp_path / 'no.png')])
    assert not (tmp_path / 'no.png').exists()
    with pytest.raises(SystemExit, match=r'checkpoint .*missing\.pth not found'):
        load_tool('test').main([str(SHAPES_CONFIG), str(tmp_path / 'missing.pth')])


def test_publish_drops_training_state_and_hashes(tmp_path):
    state = {'w': torch.randn(3, 3)}
    torch.save(dict(state_dict=state, optimizer={'state': {0: {'momentum_buffer': torch.ones(3)}}},
                    meta=dict(iter=7, rng_state=dict(torch=torch.get_rng_state())), message_hub={}),
               tmp_path / 'iter_7.pth')
    out = model_zoo.publish(str(tmp_path / 'iter_7.pth'), str(tmp_path / 'release'), name='shapes_model')
    assert os.path.basename(out['path']) == f'shapes_model-{out["sha256"][:8]}.pth'
    assert out['sha256'] == model_zoo.sha256sum(out['path'])
    published = torch.load(out['path'], weights_only=True)
    assert set(published) == {'state_dict', 'meta'} and published['meta'] == {'iter': 7}
    assert torch.equal(published['state_dict']['w'], state['w'])


@pytest.mark.parametrize('layout', ['torchvision', 'mmdet'])
def test_convert_resnet_weights_into_attention_backbone(tmp_path, layout):
    import torchvision
    source = torchvision.models.resnet18(weights=None).state_dict()
    if layout == 'mmdet':
        # a detector's checkpoint: its backbone is converted, the rest reported as dropped
        saved = dict(state_dict={**{f'backbone.{k}': v for k, v in source.items() if not k.startswith('fc.')},
                                 'rpn_head.rpn_conv.weight': torch.zeros(2, 2)}, meta={})
    else:
        saved = source
    torch.save(saved, tmp_path / 'resnet18.pth')
    out = model_zoo.convert_resnet(str(tmp_path / 'resnet18.pth'), str(tmp_path / 'converted.pth'))
    assert set(out['dropped']) >= ({'fc.weight', 'fc.bias'} if layout == 'torchvision' else
                                   {'rpn_head.rpn_conv.weight'})
    backbone = MODELS.build(dict(
        type='AttentionBackbone', attention_stages=(0, 1, 2), attention_channels=8,
        backbone=dict(type='ResNet', depth=18, init_cfg=dict(type='Pretrained',
                                                             checkpoint=str(tmp_path / 'converted.pth')))))
    backbone.init_weights()
    loaded = backbone.state_dict()
    for key, value in source.items():
        if key.startswith('fc.') or key.endswith('num_batches_tracked'):
            continue
        assert torch.equal(loaded[key], value), key
    for block in backbone.attention_blocks.values():
        assert 0.005 < block.conv1.weight.std() < 0.015  # kept their N(0, 0.01) initialisation


def test_convert_rejects_non_resnet_and_converting_in_place(tmp_path):
    torch.save({'classifier.weight': torch.zeros(2, 2)}, tmp_path / 'x.pth')
    with pytest.raises(ValueError, match='does not look like a ResNet'):
        model_zoo.convert_resnet(str(tmp_path / 'x.pth'), str(tmp_path / 'y.pth'))
    assert not (tmp_path / 'y.pth').exists()
    import torchvision
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / 'r18.pth')
    before = (tmp_path / 'r18.pth').read_bytes()
    with pytest.raises(ValueError, match=r'r18\.pth is the source file: converting in place would replace it'):
        model_zoo.convert_resnet(str(tmp_path / 'r18.pth'), str(tmp_path / '.' / 'r18.pth'))
    assert (tmp_path / 'r18.pth').read_bytes() == before


def test_an_output_folder_that_is_a_file_is_named_before_anything_is_written(tmp_path):
    """download, publish and convert-resnet into a "folder" that is a file: a ValueError naming it (which
    tools/model_zoo.py prints as an error line), the file untouched, no partial file left anywhere."""
    import torchvision
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / 'r18.pth')
    torch.save(dict(state_dict={'w': torch.ones(2)}), tmp_path / 'iter_1.pth')
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('not a folder')
    calls = [('download folder', lambda: model_zoo.download('http://127.0.0.1:9/x.pth', str(blocker / 'x.pth'), None)),
             ('publish folder', lambda: model_zoo.publish(str(tmp_path / 'iter_1.pth'), str(blocker))),
             ('destination folder', lambda: model_zoo.convert_resnet(str(tmp_path / 'r18.pth'),
                                                                     str(blocker / 'sub' / 'r18.pth')))]
    for what, call in calls:
        with pytest.raises(ValueError, match=f'{what} .*notes.txt.*: a file of that name .* in the way; name a folder'):
            call()
    assert blocker.read_text() == 'not a folder'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['iter_1.pth', 'notes.txt', 'r18.pth']


def test_mim_download_reads_the_installed_package(server, tmp_path, mim):
    python = sys.executable
    wheel_dir, site = tmp_path / 'wheel', tmp_path / 'site'
    subprocess.run([python, '-m', 'pip', 'wheel', str(REPO), '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(wheel_dir)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob('acouplenet-*.whl'))
    subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    metafile = site / 'projects' / '.mim' / 'configs' / 'acouplenet' / 'metafile.yml'
    assert metafile.is_file() and (site / 'projects' / '.mim' / 'model-index.yml').is_file()
    # Publish a checkpoint for one entry of the installed copy, served by the local server.
    data = yaml.safe_load(metafile.read_text())
    for entry in data['Models']:
        if entry['Name'] == 'couplenet_r101_1xb2-ms-110k_voc0712':
            entry['Weights'] = f'{server}/good.pth'
            entry.setdefault('Metadata', {})['Weights SHA256'] = SHA
    metafile.write_text(yaml.safe_dump(data))
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([mim, 'download', 'acouplenet', '--config', 'couplenet_r101_1xb2-ms-110k_voc0712',
                             '--dest', str(tmp_path / 'dl')], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / 'dl' / 'good.pth').read_bytes() == PAYLOAD
    assert (tmp_path / 'dl' / 'couplenet_r101_1xb2-ms-110k_voc0712.py').is_file()


def test_mim_search_reads_the_editable_install(tmp_path, mim):
    # The project's own environment installs the repo in editable mode; mim looks for the index where a
    # wheel puts it (<site-packages>/projects/.mim), which tools/setup_env.sh links to the repo's.
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([mim, 'search', 'acouplenet', '--config', 'acouplenet_r101_1xb2-ms-110k_voc0712'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    metafile = yaml.safe_load((REPO / 'configs' / 'acouplenet' / 'metafile.yml').read_text())
    entry = next(m for m in metafile['Models'] if m['Name'] == 'acouplenet_r101_1xb2-ms-110k_voc0712')
    map_voc07 = entry['Results'][0]['Metrics']['mAP']
    assert 'config id: acouplenet_r101_1xb2-ms-110k_voc0712' in result.stdout
    assert re.search(rf'voc2007 test/map\s+{map_voc07}\n', result.stdout), result.stdout
