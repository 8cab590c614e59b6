"""Resuming mmengine checkpoints under torch's ``weights_only`` loading.

Since torch 2.6, ``torch.load`` unpickles only allow-listed types, and
mmengine 0.10.7 calls it with that default. A checkpoint saved by mmengine's
runner holds, besides tensors and plain containers, the message hub's
``HistoryBuffer`` objects (numpy arrays inside, and their statistics methods,
pickled as ``getattr(HistoryBuffer, 'mean')``), so ``--resume`` fails with
"Unsupported global". :func:`allow_mmengine_checkpoint_types` adds exactly
those data types to torch's allow-list, and lets ``getattr`` resolve only
HistoryBuffer's statistics methods (a general ``getattr`` would reach, say,
``ndarray.tofile``). Anything else in a checkpoint (an arbitrary class, a
function to call) is still refused. Importing ``projects.acouplenet`` (every
config does) calls it, and :func:`use_safe_local_loading`, so that a bad
local checkpoint is named with what is wrong wherever mmengine loads it.
:func:`load_predictions_file` loads the prediction pickles of
``tools/test.py --out`` under the same rule.
"""
import copy
import io
import logging
import os.path as osp
import pickle
import warnings
from typing import List, Optional, Union

import numpy as np
import torch
from mmengine.logging import print_log

from .hooks import class_count_mismatches

_ALLOWED: List[object] = []


def mmengine_checkpoint_types() -> List[object]:
    """The non-tensor types mmengine's runner writes into a checkpoint."""
    from mmengine.logging import HistoryBuffer
    try:
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    # The dtype classes pickled with arrays and numpy scalars (numpy >= 1.25 names them numpy.dtypes.*).
    dtype_classes = [type(np.dtype(t)) for t in ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
                                                 'uint32', 'uint64', 'float16', 'float32', 'float64', 'object')]
    return [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def history_buffer_getattr(obj, name: str):
    """``getattr`` as checkpoints may use it: only ``HistoryBuffer``'s registered statistics methods."""
    from mmengine.logging import HistoryBuffer
    # The built-in statistics are registered on the class only once a buffer exists; custom ones by
    # HistoryBuffer.register_statistics.
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only the '
                                 f'statistics methods of mmengine\'s HistoryBuffer may be looked up')


def allow_mmengine_checkpoint_types() -> None:
    """Allow-list mmengine's checkpoint types for ``weights_only`` loading (idempotent)."""
    if _ALLOWED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    _ALLOWED.extend(mmengine_checkpoint_types())
    _ALLOWED.append((history_buffer_getattr, 'builtins.getattr'))
    torch.serialization.add_safe_globals(_ALLOWED)


class RefusedCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint holds pickled objects that safe loading refuses: an unpickling error, and a bad input
    (``ValueError``) for the tools that report bad files in one line."""


def is_checkpoint_url(path: str) -> bool:
    """Whether ``path`` names a checkpoint by URL or by one of mmengine's schemes (``https://``,
    ``torchvision://``, ``open-mmlab://``, ...) rather than as a local file."""
    return '://' in str(path)


def load_checkpoint_file(path: str, map_location='cpu'):
    """``torch.load`` of a checkpoint (onto the CPU by default), safely, with errors that say what is wrong
    with the file. A URL (:func:`is_checkpoint_url`) is fetched by mmengine's ``CheckpointLoader``, which
    importing the project makes download it once and load it the same way (``model_zoo.load_url``).

    torch answers a truncated or foreign file either with a zip-reader error or,
    for a file that is not a zip, with its ``weights_only`` message, which then
    suggests turning the safety off; neither names the file's problem.

    Raises:
        ValueError: the file is empty, truncated, corrupt or not a PyTorch
            checkpoint.
        RefusedCheckpointError: it holds objects that safe loading refuses (a
            ``pickle.UnpicklingError`` and a ``ValueError``).
    """
    if is_checkpoint_url(path):
        from mmengine.runner import CheckpointLoader
        return CheckpointLoader.load_checkpoint(path, map_location)
    try:
        return torch.load(path, map_location=map_location)
    except pickle.UnpicklingError as exc:
        # torch's message wraps the unpickler's reason (its last line) in advice to load unsafely.
        text = str(exc)
        lines = [line.strip() for line in text.split('Check the documentation')[0].splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        if 'GLOBAL' in reason or 'refusing getattr' in reason:
            raise RefusedCheckpointError(
                f'{path} holds pickled objects that safe loading refuses ({reason}): only tensors, plain '
                f'containers and the types mmengine stores are loaded. Load it only if you trust its source, and '
                f'save its weights alone (torch.save(dict(state_dict=...))) to use it here') from exc
        raise ValueError(f'{path} is not a readable PyTorch checkpoint (corrupt or another format: '
                         f'{reason})') from exc
    except (RuntimeError, EOFError) as exc:  # the zip reader's errors on a cut file; EOFError on an empty one
        raise ValueError(f'{path} is not a readable PyTorch checkpoint (empty, truncated or corrupt: '
                         f'{str(exc).split(". ")[0] or type(exc).__name__}); download or copy it again') from exc


def load_local_checkpoint(filename: str, map_location=None):
    """mmengine's loader of local checkpoint files (``CheckpointLoader``'s scheme ``''``), with
    :func:`load_checkpoint_file`'s errors in place of torch's zip-reader error or its advice to load unsafely."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} not found')
    return load_checkpoint_file(filename, map_location)


def use_safe_local_loading() -> None:
    """Load the local checkpoints mmengine reads (``load_from``, resume, ``init_detector``,
    ``DetInferencer(weights=...)``) with :func:`load_local_checkpoint` (idempotent)."""
    from mmengine.runner import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)


class PredictionsUnpickler(pickle.Unpickler):
    """Unpickles what ``tools/test.py --out`` (mmdet's ``DumpDetResults``) writes: lists and dicts of
    tensors, numpy arrays and plain values. Anything else (a class to build, a function to call) is refused,
    as for checkpoints; the storages inside the tensors are read with ``weights_only`` loading."""
    # (_codecs.encode turns the pickled text of bytes back into bytes; torch's weights_only unpickler allows it too)
    ALLOWED = {('torch._utils', '_rebuild_tensor_v2'), ('collections', 'OrderedDict'), ('_codecs', 'encode')}

    def find_class(self, module: str, name: str):
        if (module, name) == ('torch.storage', '_load_from_bytes'):
            return lambda data: torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        found = super().find_class(module, name) if module.split('.')[0] == 'numpy' else None
        if found is not None and any(found is t for t in mmengine_checkpoint_types()):
            return found
        raise pickle.UnpicklingError(f'refusing {module}.{name}: a predictions file holds tensors, arrays and '
                                     f'plain values only')


def load_predictions_file(path: str):
    """The contents of a predictions pickle (``tools/test.py --out``), loaded safely.

    Raises:
        ValueError: the file is empty, truncated, not a pickle, or holds
            objects other than tensors, numpy arrays and plain values.
    """
    try:
        with open(path, 'rb') as f:
            return PredictionsUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise ValueError(f'{path} is not a readable predictions file ({type(exc).__name__}: {exc})') from exc


def checkpoint_mismatch(model: torch.nn.Module, checkpoint: Union[str, dict]) -> dict:
    """Keys of ``checkpoint``'s state dict that do not fit ``model``.

    Args:
        model: The detector (a DDP- or TTA-wrapped one is compared by its
            inner detector).
        checkpoint: A checkpoint file, or its already loaded contents.

    Returns:
        dict: ``missing`` (in the model, not the checkpoint), ``unexpected``
        (in the checkpoint, not the model) and ``mismatched`` (``(key,
        checkpoint shape, model shape)``) lists, and ``matched`` (count).
    """
    from mmengine.model import BaseTTAModel, is_model_wrapper
    if is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module  # a checkpoint holds the inner detector (mmengine's load_state_dict unwraps alike)
    ckpt = load_checkpoint_file(checkpoint) if isinstance(checkpoint, str) else checkpoint
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) != tuple(v.shape)]
    return dict(missing=sorted(set(own) - set(state)), unexpected=sorted(set(state) - set(own)),
                mismatched=mismatched, matched=len(set(own) & set(state)) - len(mismatched))


def assert_checkpoint_fits(model: torch.nn.Module, checkpoint: str, config: str = 'the config',
                           loaded: Optional[dict] = None) -> None:
    """Raise a ``ValueError`` that lists what does not fit when ``checkpoint`` is not ``model``'s.

    For testing and inference, where every weight must come from the
    checkpoint (fine-tuning with ``load_from`` tolerates a replaced head and
    only warns, as mmengine does). ``loaded``: the file's contents when the
    caller has them already.
    """
    report = checkpoint_mismatch(model, checkpoint if loaded is None else loaded)
    if report['missing'] or report['unexpected'] or report['mismatched']:
        def head(items):
            return ', '.join(map(str, items[:5])) + (f' ... ({len(items)} in all)' if len(items) > 5 else '')
        lines = [f'checkpoint {checkpoint} does not fit the model of {config} ({report["matched"]} weights match):']
        if report['mismatched']:
            lines.append('  shape mismatches (key, checkpoint, model): ' + head(report['mismatched']))
        if report['missing']:
            lines.append('  missing from the checkpoint: ' + head(report['missing']))
        if report['unexpected']:
            lines.append('  not in the model: ' + head(report['unexpected']))
        lines.append('Use the config the checkpoint was trained with (its meta holds it), or a checkpoint of '
                     'this config.')
        raise ValueError('\n'.join(lines))


def init_detector_strict(config: str, checkpoint: str, device: str = 'cpu') -> torch.nn.Module:
    """``mmdet.apis.init_detector`` that refuses a checkpoint of another model.

    ``init_detector`` only warns about missing or unexpected keys and keeps
    the random weights; for inference and evaluation that is a silent wrong
    result, so this raises :func:`assert_checkpoint_fits`' ``ValueError``.
    It also only warns when the checkpoint holds no class names (weights
    converted from elsewhere) and then names the detections with COCO's 80
    classes, whatever the model predicts: here the names come from the
    config's test dataset instead (logged), and class names whose count is
    not the model's ``num_classes`` raise a ``ValueError``.
    """
    from mmdet.apis import init_detector
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    # mmdet's "use COCO classes by default" would contradict the names set below; it calls
    # warnings.simplefilter('once') right before warning, which overrides an 'ignore' filter, so the
    # warnings are recorded and all others re-issued.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = init_detector(cfg, checkpoint, device=device)
    for caught_warning in caught:
        if not str(caught_warning.message).startswith('dataset_meta or class names are not saved'):
            warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                   caught_warning.lineno)
    # Read again, after init_detector has let go of its copy (a bad file has stopped it with
    # load_checkpoint_file's error): one copy of the weights besides the model's at a time.
    loaded = load_checkpoint_file(checkpoint)
    assert_checkpoint_fits(model, checkpoint, config, loaded=loaded)
    meta = (loaded.get('meta') or {}) if isinstance(loaded, dict) else {}
    named_in_checkpoint = 'dataset_meta' in meta or 'CLASSES' in meta
    if not named_in_checkpoint:
        classes = tuple(_test_dataset_metainfo(cfg)['classes'])
        print_log(f'{checkpoint} holds no class names (meta.dataset_meta); the detections are named after the '
                  f'classes of the test dataset of {config}: {", ".join(classes[:5])}'
                  f'{" ..." if len(classes) > 5 else ""} ({len(classes)} in all)', logger='current',
                  level=logging.WARNING)
        model.dataset_meta['classes'] = classes
    names = len(model.dataset_meta['classes'])
    mismatched = class_count_mismatches(model, names)
    if mismatched:
        head = mismatched[0][1]
        if named_in_checkpoint:
            raise ValueError(f'{checkpoint} names {names} classes in its meta, but the model of {config} predicts '
                             f'{head.num_classes}; use the config the checkpoint was trained with')
        raise ValueError(f'the test dataset of {config} has {names} classes, but its model predicts '
                         f'{head.num_classes} and {checkpoint} names none; set the dataset\'s '
                         f'metainfo=dict(classes=...) to the {head.num_classes} classes the checkpoint was trained on')
    return model


def _test_dataset_metainfo(cfg) -> dict:
    """Metainfo of the config's test dataset, built lazily (no annotation file is read), as mmdet does."""
    from mmdet.registry import DATASETS
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    dataset_cfg['lazy_init'] = True
    return DATASETS.build(dataset_cfg).metainfo
