"""Model zoo: find checkpoints by model name, download them safely, publish and convert weights.

* :func:`download` streams a checkpoint to a temporary file next to its
  destination, checks its sha256 and renames it into place; a cut connection
  is retried, a hash mismatch deletes the file and raises. A file at the
  destination is only ever a whole, verified checkpoint.
* :func:`publish` drops the optimizer and other training state from a
  checkpoint and names it ``<name>-<first 8 hex of sha256>.pth`` (mmdet's
  convention), returning the sha256 for the metafile.
* :func:`convert_resnet` maps ImageNet ResNet weights (torchvision or mmdet
  layout) onto :func:`AttentionBackbone`.
* :func:`load_url` loads the checkpoints that mmengine names by URL
  (``load_from``, ``init_cfg``, ``init_detector``, ``DetInferencer``; the
  ``http(s)://``, ``torchvision://``, ``open-mmlab://`` and ``mmcls://``
  schemes) through :func:`download` and safe loading;
  :func:`use_safe_url_loading` puts it in mmengine's place.
"""
import io
import os
import os.path as osp
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional

import torch
import yaml
from mmengine.logging import print_log

from .fileio import atomic_write, check_output_folder, sha256sum
from .safe_loading import RefusedCheckpointError, load_checkpoint_file

# The package's model index, where mim reads it: in the repository a link to the top-level model-index.yml,
# in an installed wheel a copy.
MODEL_INDEX = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'model-index.yml')
CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    pass


class DownloadError(RuntimeError):
    pass


# -- the index ---------------------------------------------------------------------------------------
def load_models(model_index: str = MODEL_INDEX) -> Dict[str, dict]:
    """``{name: model entry}`` from an mmdet-style ``model-index.yml`` and the metafiles it imports."""
    with open(model_index) as f:
        index = yaml.safe_load(f) or {}
    models = {}
    root = osp.dirname(osp.abspath(model_index))
    entries = list(index.get('Models', []))
    for metafile in index.get('Import', []):
        with open(osp.join(root, metafile)) as f:
            entries += (yaml.safe_load(f) or {}).get('Models', [])
    for entry in entries:
        models[entry['Name']] = entry
    return models


def find_model(name: str, model_index: str = MODEL_INDEX) -> dict:
    models = load_models(model_index)
    if name not in models:
        import difflib
        close = difflib.get_close_matches(name, list(models), n=3)
        hint = f'Did you mean {", ".join(close)}? ' if close else ''
        raise KeyError(f'no model named {name!r} in {model_index}. {hint}Known models: {", ".join(sorted(models))}')
    return models[name]


# -- download ----------------------------------------------------------------------------------------
def _stream(url: str, out, timeout: float, progress: Optional[Callable[[int, Optional[int]], None]]) -> None:
    request = urllib.request.Request(url, headers={'User-Agent': 'acouplenet-model-zoo'})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = response.headers.get('Content-Length')
        total = int(total) if total is not None else None
        done = 0
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        if total is not None and done != total:
            raise DownloadError(f'connection closed after {done} of {total} bytes')


def download(url: str, dest: str, sha256: Optional[str], retries: int = 3, timeout: float = 60.0,
             backoff: float = 1.0, progress=None) -> str:
    """Download ``url`` to the file ``dest``, verified against ``sha256``.

    Returns:
        str: ``dest``.

    Raises:
        ChecksumError: The downloaded bytes do not hash to ``sha256`` (the
            file is deleted, not retried: the server holds another file).
        DownloadError: Every attempt failed (connection errors, cut
            transfers, server errors), or the server answered with a client
            error (404 and the like, not retried); nothing is left at ``dest``.
    """
    if sha256 is not None and len(sha256) != 64:
        raise ValueError(f'sha256 {sha256!r} is not a 64-hex-digit sha256')
    dest = osp.abspath(dest)
    os.makedirs(check_output_folder(osp.dirname(dest), 'download folder'), exist_ok=True)
    if osp.isfile(dest) and sha256 is not None and sha256sum(dest) == sha256:
        return dest
    errors: List[str] = []
    for attempt in range(1, retries + 1):
        fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(dest)}.', suffix='.part', dir=osp.dirname(dest))
        try:
            with os.fdopen(fd, 'wb') as out:
                _stream(url, out, timeout, progress)
            if sha256 is not None:
                actual = sha256sum(tmp)
                if actual != sha256:
                    raise ChecksumError(f'{url}: sha256 {actual} does not match the expected {sha256}; the '
                                        f'download was deleted. The file on the server differs from the one the '
                                        f'model zoo lists: check the URL, or report the mismatch.')
            os.replace(tmp, dest)
            return dest
        except ChecksumError:
            raise
        except (urllib.error.URLError, OSError, DownloadError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500:
                # the server's answer (not found, forbidden) would not change on a retry
                raise DownloadError(f'{url}: HTTP {exc.code} {exc.reason}; check the URL. Nothing was written to '
                                    f'{dest}') from exc
            errors.append(f'attempt {attempt}: {exc}')
            if attempt < retries:
                time.sleep(backoff * attempt)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
    raise DownloadError(f'could not download {url} after {retries} attempts ({"; ".join(errors)}); '
                        f'nothing was written to {dest}')


def download_model(name: str, dest_dir: str, model_index: str = MODEL_INDEX, **kwargs) -> str:
    """Download the checkpoint of the model ``name`` from the index into ``dest_dir``."""
    entry = find_model(name, model_index)
    url = entry.get('Weights')
    if not url:
        raise DownloadError(f'{name} has no released checkpoint: the model zoo lists the paper\'s results for '
                            f'reference. Train it with `python tools/train.py {entry.get("Config")}`.')
    sha256 = (entry.get('Metadata') or {}).get('Weights SHA256')
    if not sha256:
        raise ChecksumError(f'{name} lists no "Weights SHA256" to verify {url} against; refusing an unverified '
                            f'download')
    return download(url, osp.join(dest_dir, url.rsplit('/', 1)[-1]), sha256, **kwargs)


# -- checkpoints named by URL ------------------------------------------------------------------------
def _listed_sha256(url: str) -> Optional[str]:
    """The model index's sha256 of the checkpoint at ``url``, if the index lists it (and is there: a copy of
    the package folder alone has none)."""
    if not osp.isfile(MODEL_INDEX):
        return None
    for entry in load_models(MODEL_INDEX).values():
        if entry.get('Weights') == url:
            return (entry.get('Metadata') or {}).get('Weights SHA256')
    return None


def progress_bar(name: str) -> Callable[[int, Optional[int]], None]:
    """A :func:`download` progress callback that draws a tqdm bar from the first bytes on."""
    from tqdm import tqdm
    bars = []

    def update(done: int, total: Optional[int]) -> None:
        if not bars:
            bars.append(tqdm(desc=name, total=total, unit='B', unit_scale=True, unit_divisor=1024))
        bars[0].update(done - bars[0].n)  # (a retried download starts again at 0)
        if total is not None and done >= total:
            bars[0].close()
    return update


def load_url(url: str, model_dir: Optional[str] = None, map_location=None, progress: bool = True,
             check_hash: bool = False, file_name: Optional[str] = None):
    """The checkpoint at ``url``, downloaded once and loaded safely: mmengine's ``load_url`` made safe.

    mmengine 0.10.7 loads every checkpoint it names by URL through
    ``torch.hub.load_state_dict_from_url``, which unpickles with
    ``weights_only=False``: a checkpoint from the network can run any code.
    Here the file is downloaded as :func:`download` does (a temporary file
    renamed into place, cut connections retried, checked against the model
    index's sha256 where the index lists the URL) into torch hub's cache
    (``<torch hub dir>/checkpoints``, as torch and mmengine cache it), and read
    by :func:`load_checkpoint_file` (``weights_only``: tensors, plain
    containers and mmengine's own types).

    Args:
        url (str): ``http://`` or ``https://`` URL of the checkpoint.
        model_dir (str, optional): The cache folder.
        map_location: As for ``torch.load``.
        progress (bool): Show a progress bar while downloading.
        check_hash (bool): Accepted for mmengine's signature: a URL the model
            index lists is always checked against its full sha256.
        file_name (str, optional): The cached file's name; the URL's by default.

    Raises:
        RefusedCheckpointError: The file holds objects that safe loading
            refuses (it stays in the cache, named in the message).
        ChecksumError, DownloadError: As :func:`download`.
        ValueError: The cache folder cannot be written, or the file is no
            readable checkpoint (then it is deleted from the cache).
    """
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, file_name or osp.basename(urllib.parse.urlparse(url).path))
    sha256 = _listed_sha256(url)
    if sha256 is not None or not osp.isfile(cached):  # (download keeps a cached file whose sha256 matches)
        check_output_folder(model_dir, "torch hub's checkpoint cache (TORCH_HOME moves it)")
        if not osp.isfile(cached):
            print_log(f'Downloading {url} to {cached}', logger='current')
        download(url, cached, sha256, progress=progress_bar(osp.basename(cached)) if progress else None)
    try:
        return load_checkpoint_file(cached, map_location)
    except RefusedCheckpointError:
        raise
    except ValueError as exc:
        # Cut where the server sent no length, say, or damaged in the cache: delete it, or every later load
        # would read it again.
        os.remove(cached)
        raise ValueError(f'{exc}. It came from {url}; the cached copy was deleted, so the next load downloads it '
                         f'again') from exc


def use_safe_url_loading() -> None:
    """Route mmengine's URL checkpoint schemes through :func:`load_url` (idempotent).

    mmengine's ``http(s)://`` loader and the ``torchvision://``,
    ``open-mmlab://`` and ``mmcls://`` loaders that resolve a name to a URL all
    call the ``load_url`` that ``mmengine.runner.checkpoint`` imported, so that
    one name is the one place to replace.
    """
    import mmengine.runner.checkpoint as mmengine_checkpoint
    mmengine_checkpoint.load_url = load_url


# -- publish -----------------------------------------------------------------------------------------
def publish(checkpoint: str, out_dir: str, name: Optional[str] = None) -> Dict[str, str]:
    """Keep only ``state_dict`` and ``meta`` of a training checkpoint, hash it and name it by the hash.

    Returns:
        dict: ``path`` and ``sha256`` of the published file.
    """
    ckpt = load_checkpoint_file(checkpoint)
    if not isinstance(ckpt, dict) or 'state_dict' not in ckpt:
        raise ValueError(f'{checkpoint} has no state_dict; is it an mmengine checkpoint?')
    meta = {k: v for k, v in (ckpt.get('meta') or {}).items() if k not in ('rng_state', )}
    slim = dict(state_dict={k: v.cpu() for k, v in ckpt['state_dict'].items()}, meta=meta)
    name = name or osp.splitext(osp.basename(checkpoint))[0]
    out_dir = check_output_folder(out_dir, 'publish folder')
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{name}.', suffix='.part', dir=out_dir)
    os.close(fd)
    try:
        torch.save(slim, tmp)
        digest = sha256sum(tmp)
        final = osp.join(out_dir, f'{name}-{digest[:8]}.pth')
        os.replace(tmp, final)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return dict(path=final, sha256=digest)


# -- convert -----------------------------------------------------------------------------------------
def convert_resnet(src: str, dst: str) -> Dict[str, List[str]]:
    """ImageNet ResNet weights -> a backbone checkpoint that ``AttentionBackbone`` loads.

    Accepts torchvision's layout (``conv1.weight``, ``bn1.*``, ``layerX.Y.*``,
    ``fc.*``; a bare state dict) and mmdet/mmcv's (the same names, possibly
    under ``state_dict`` and with a ``backbone.`` prefix, as in a detector's
    checkpoint, whose other weights are dropped). The classifier is dropped.
    The result, ``{'state_dict': ...}`` with backbone-level keys, is what
    ``init_cfg=dict(type='Pretrained', checkpoint=dst)`` of the wrapped ResNet
    expects. ImageNet weights have no attention blocks, which then keep their
    N(0, 0.01) initialisation; an ACoupleNet checkpoint's blocks load with the
    rest.

    Returns:
        dict: ``dropped`` keys (classifier, a detector's non-backbone weights).
    """
    if osp.exists(dst) and osp.samefile(src, dst):
        raise ValueError(f'{dst} is the source file: converting in place would replace it with its backbone '
                         f'weights alone; choose another destination')
    ckpt = load_checkpoint_file(src)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{src} is not a ResNet state dict (torchvision or mmdet layout)')
    kept, dropped = {}, []
    if any(k.startswith('backbone.') for k in state):  # a detector's: its backbone (attention blocks included)
        dropped = [k for k in state if not k.startswith('backbone.')]
        state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    for key, value in state.items():
        if key.startswith(('fc.', 'head.', 'classifier.')) or key.endswith('num_batches_tracked'):
            dropped.append(key)
        else:
            kept[key] = value
    if 'conv1.weight' not in kept or not any(k.startswith('layer1.') for k in kept):
        raise ValueError(f'{src} does not look like a ResNet (no conv1.weight / layer1.*); converted nothing')
    check_output_folder(osp.dirname(osp.abspath(dst)), 'destination folder')
    buffer = io.BytesIO()
    torch.save(dict(state_dict=kept, meta=dict(converted_from=osp.basename(src))), buffer)
    atomic_write(buffer.getvalue(), dst)
    return dict(dropped=dropped)
