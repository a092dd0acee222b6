"""Teachers a suite does not train: read a checkpoint file safely, fit it to a kdbench network, verify, load.

A teacher file may be

- kdbench's own: a teacher job's ``weights.pt`` (the ``Network`` state dict, keys ``model.<name>``), a converted
  file from ``python -m kdbench teacher import``, or a run's ``checkpoint.pt`` (its ``student`` entry);
- a RepDistiller / mdistiller file: ``save/models/<arch>_vanilla/ckpt_epoch_240.pth`` (a dict ``{'epoch', 'model',
  'accuracy', 'optimizer'}``, mdistiller's ``cifar_teachers.tar`` holds the same files), a ``*_last.pth`` with an
  ``opt`` namespace, mdistiller's ``student_best`` or whole-distiller ``best``/``latest`` files, any dict with a
  ``model``, ``state_dict`` or ``net`` entry, with or without DataParallel's ``module.`` prefix, in the
  reference zoo's parameter names (renamed by :mod:`kdbench.models.reference_names`);
- a timm or torchvision state dict for an ImageNet model (timm's ResNets use torchvision's names).

Only tensors are read: the file is loaded with ``torch.load(weights_only=True)``, and every non-tensor object in it
that torch would refuse (an argparse namespace, numpy scalars, optimizer extras, config objects) is replaced by an
inert placeholder while loading, so nothing of the file's own code runs. Which layout a file has is not guessed:
each candidate renaming is tried and the one whose names *and* shapes equal the network's is taken; when none
fits, :class:`TeacherFileError` names the architecture and counts the missing, unexpected and mis-shaped tensors
with the first few of each.
"""

from __future__ import annotations

import functools
import io
import os
import pickletools
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench import store
from kdbench.config import ConfigError
from kdbench.models import Network, create_network
from kdbench.models.reference_names import reference_renamer
from kdbench.spec import TeacherSource
from kdbench.store.tensors import spread_packed

ENTRY_KEYS = ("model", "state_dict", "net", "student")
"""Dict entries that hold a model's tensors in the field's checkpoint files (tried in this order)."""
_TRUSTED_MODULES = ("torch", "collections", "builtins", "__builtin__", "_codecs")
"""Globals of these modules are left to torch's own ``weights_only`` allow-list (tensors, storages, dicts)."""


class TeacherFileError(ValueError):
    """A teacher file that cannot be used: the message names the file and what is wrong with it."""


class TeacherNotReadyError(RuntimeError):
    """A teacher a student run needs is not there or not what its record says."""


@dataclass(frozen=True)
class TeacherFile:
    """What a teacher file gave: its tensors in kdbench's names (verified against ``arch``), the layout it was
    in, the entries skipped (optimizer state, epoch, ...), and the top-1 the file itself states, if any."""

    path: Path
    arch: str
    state: dict[str, torch.Tensor]
    layout: str
    skipped: tuple[str, ...]
    stated_top1: float | None


# ------------------------------------------------------------------------------------------------ reading


class _Skipped:
    """An inert stand-in for a pickled object kdbench does not read: takes any arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Skipped:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "<skipped>"


class _SkippedMapping:
    """An inert stand-in for a pickled mapping or plain object (a dict subclass, a config namespace): it becomes an
    empty ``OrderedDict``, which torch's restricted unpickler lets receive items and attribute state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:
        return OrderedDict()


def _pickled_globals(data: bytes) -> set[str]:
    """Every ``module.name`` a pickle refers to, read from its opcodes without running any of them."""
    names: set[str] = set()
    pushed: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.add(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
            names.add(f"{pushed[-2]}.{pushed[-1]}")
        if op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = pushed[-1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(int(arg)))
        elif "UNICODE" in op.name or "STRING" in op.name:
            pushed.append(arg)
        else:
            pushed.append(None)
    return names


def _pickles_of(path: Path) -> Iterator[bytes]:
    """The pickles of a ``torch.save`` file: ``data.pkl`` of the zip format, or the leading pickles of the legacy
    format (magic number, protocol, system info, the object, the storage keys; raw storage bytes follow)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    yield archive.read(name)
        return
    stream = io.BytesIO(path.read_bytes())
    for _ in range(5):
        start = stream.tell()
        for _op in pickletools.genops(stream):
            pass
        yield stream.getvalue()[start:stream.tell()]


def _stand_ins(names: set[str], mappings: bool) -> list[tuple[type, str]]:
    """Placeholders for every global torch would refuse (numpy's always inert objects; others mappings or not)."""
    stand_ins = []
    for name in sorted(names):
        if name.split(".")[0] in _TRUSTED_MODULES and not name.startswith("collections.defaultdict"):
            continue
        mapping = mappings and not name.startswith("numpy")
        stand_ins.append((type("Skipped", (_SkippedMapping if mapping else _Skipped,), {}), name))
    return stand_ins


def read_checkpoint(path: Path) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True``; objects other than tensors and plain containers come
    back as inert placeholders. Raises :class:`TeacherFileError` naming the file for anything unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TeacherFileError(f"'{path}' does not exist")
    try:
        names: set[str] = set()
        for data in _pickles_of(path):
            names |= _pickled_globals(data)
    except Exception as err:  # not a pickle / zip at all: bytes, text, a truncated file
        raise TeacherFileError(f"'{path}' is not a torch checkpoint ({type(err).__name__}: {err})") from None
    last: Exception | None = None
    for mappings in (True, False):  # dict-like placeholders first; plain ones for objects with tuple state
        try:
            with torch.serialization.safe_globals(_stand_ins(names, mappings)):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            last = err
    raise TeacherFileError(f"'{path}' cannot be read safely as a checkpoint ({type(last).__name__}: "
                           f"{_reason(last)})")


def _reason(err: Exception | None) -> str:
    """The informative line of torch's (long, multi-line) ``weights_only`` refusal, or the error's first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if any(word in line for word in ("GLOBAL", "Unsupported", "Can only", "blocked", "unrecognized")):
            return line[:300]
    return (lines[0] if lines else type(err).__name__)[:300]


def _tensor_mapping(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, dict):
        return None
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors or None


def model_tensors(obj: Any) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The model's tensors in a loaded checkpoint and the top-level entries skipped beside them.

    A dict of tensors is taken as it is; otherwise the first of :data:`ENTRY_KEYS` that holds tensors. Prefixes
    that wrap a model are removed: DataParallel's ``module.``, a distiller's ``student.`` (mdistiller's whole
    checkpoints keep ``student.`` and ``teacher.`` side by side) and kdbench's ``Network`` prefix ``model.``."""
    obj = spread_packed(obj)  # a kdbench run's epoch checkpoint
    tensors = _tensor_mapping(obj)
    skipped: tuple[str, ...] = ()
    if tensors is None or (isinstance(obj, dict) and any(k in obj for k in ENTRY_KEYS)):
        for key in ENTRY_KEYS:
            inner = _tensor_mapping(obj.get(key)) if isinstance(obj, dict) else None
            if inner is not None:
                tensors, skipped = inner, tuple(sorted(str(k) for k in obj if k != key))
                break
    if tensors is None:
        raise TeacherFileError("holds no model tensors (expected a state dict, or a dict with one of the entries "
                               f"{', '.join(ENTRY_KEYS)})")
    for prefix in ("module.", "student.", "model."):
        if prefix == "student." and any(k.startswith("student.") for k in tensors):
            tensors = {k: v for k, v in tensors.items() if k.startswith("student.")}
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors, skipped


def stated_top1(obj: Any) -> float | None:
    """The accuracy a checkpoint states about itself (RepDistiller's ``accuracy``/``best_acc``, mdistiller's
    ``best_acc``), when it is a number; informational only."""
    if not isinstance(obj, dict):
        return None
    for key in ("accuracy", "best_acc", "acc", "top1"):
        value = obj.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


# ------------------------------------------------------------------------------------------------ fitting


def _layouts(model: nn.Module) -> list[tuple[str, Callable[[str], str | None]]]:
    layouts: list[tuple[str, Callable[[str], str | None]]] = [("kdbench/timm", lambda key: key)]
    renamer = reference_renamer(model)
    if renamer is not None:
        layouts.append(("RepDistiller/mdistiller", renamer))
    return layouts


def _mismatch(expected: dict[str, torch.Tensor], renamed: dict[str, tuple[str, torch.Tensor]],
              unmapped: list[str]) -> dict[str, list[str]]:
    """What keeps a renamed file from fitting: the model's tensors it lacks (model names), the file's tensors the
    model has no place for and those of another shape (the file's own names)."""
    missing = [k for k in expected if k not in renamed and not k.endswith("num_batches_tracked")]
    unexpected = unmapped + [original for k, (original, _) in renamed.items() if k not in expected]
    misshaped = [f"{original} {tuple(value.shape)} vs {tuple(expected[k].shape)}"
                 for k, (original, value) in renamed.items() if k in expected and value.shape != expected[k].shape]
    return {"missing": missing, "unexpected": unexpected, "mis-shaped": misshaped}


def fit_state_dict(model: nn.Module, arch: str, tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                                            str]:
    """``tensors`` renamed to ``model``'s names by the one layout whose names and shapes all fit; BatchNorm's
    ``num_batches_tracked`` counters, which files written before torch 0.4.1 lack, are filled with zeros.
    Raises :class:`TeacherFileError` for the closest layout when none fits."""
    expected = model.state_dict()
    reports = []
    for layout, rename in _layouts(model):
        renamed: dict[str, tuple[str, torch.Tensor]] = {}
        unmapped = []
        for key, value in tensors.items():
            new = rename(key)
            if new is None:
                unmapped.append(key)
            else:
                renamed[new] = (key, value)
        problems = _mismatch(expected, renamed, unmapped)
        if not any(problems.values()):  # only num_batches_tracked can be absent here
            return {k: renamed[k][1] if k in renamed else torch.zeros_like(v) for k, v in expected.items()}, layout
        reports.append((sum(len(v) for v in problems.values()), layout, problems))
    _, layout, problems = min(reports, key=lambda r: r[0])
    parts = [f"{len(v)} {kind}" + (f" ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" if v else "")
             for kind, v in problems.items()]
    raise TeacherFileError(f"does not fit architecture '{arch}' (closest layout {layout}: {'; '.join(parts)})")


def _shape_from_tensors(tensors: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(classes, input channels) a state dict implies: rows of its last matrix (the classifier of every CNN and
    ViT kdbench builds), input channels of its first convolution. Used only to build the network a file is
    checked against when the data cannot tell; the check itself is exact."""
    matrices = [v for k, v in tensors.items() if v.dim() == 2 and k.endswith("weight")]
    convs = [v for v in tensors.values() if v.dim() == 4]
    return (int(matrices[-1].shape[0]) if matrices else 1000), (int(convs[0].shape[1]) if convs else 3)


def read_teacher(path: Path, arch: str, num_classes: int | None = None, in_chans: int | None = None,
                 img_size: int | None = None) -> tuple[Network, TeacherFile]:
    """Build ``arch`` and load the teacher file ``path`` into it (any layout above); classes and input channels
    default to what the file implies. The network is in eval mode, frozen. Raises :class:`TeacherFileError` with
    the path in the message."""
    path = Path(path).expanduser()
    obj = read_checkpoint(path)
    try:
        tensors, skipped = model_tensors(obj)
        implied = _shape_from_tensors(tensors)
        network = create_network(arch, num_classes=num_classes or implied[0], in_chans=in_chans or implied[1],
                                 img_size=img_size)
        state, layout = fit_state_dict(network.model, arch, tensors)
    except TeacherFileError as err:
        raise TeacherFileError(f"'{path}': {err}") from None
    network.model.load_state_dict(state, strict=True)
    network.eval().requires_grad_(False)
    return network, TeacherFile(path, arch, state, layout, skipped, stated_top1(obj))


def check_teacher_file(path: Path, arch: str, num_classes: int | None, in_chans: int | None) -> TeacherFile:
    """Before any job: the file must be a checkpoint that fits ``arch`` for the data's classes and channels
    (those the file implies where the data cannot tell)."""
    return read_teacher(path, arch, num_classes, in_chans)[1]


# ------------------------------------------------------------------------------------------------ plan time


def verify_source_file(source: TeacherSource | None, key: str) -> None:
    """Before any job: a checkpoint source's file exists and has the sha256 the suite states. Raises
    :class:`~kdbench.config.ConfigError` at ``<key>.checkpoint`` or ``<key>.sha256``; other sources pass."""
    if source is None or source.checkpoint is None:
        return
    path = Path(source.checkpoint).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}.checkpoint", f"teacher checkpoint '{path}' does not exist")
    actual = store.sha256_file(path)
    if actual != source.sha256:
        raise ConfigError(f"{key}.sha256", f"'{path}' has sha256 {actual}, not the {source.sha256} the suite expects")


def check_source_fits(source: TeacherSource | None, arch: str, shape: tuple[int, int] | None, key: str) -> None:
    """Before any job: a checkpoint source's file fits ``arch`` (names and shapes, any layout read here) for the
    data's (classes, channels) ``shape`` (None: what the file implies). Raises
    :class:`~kdbench.config.ConfigError` at ``<key>.checkpoint``; other sources pass."""
    if source is None or source.checkpoint is None:
        return
    try:
        _checked_file(str(Path(source.checkpoint).expanduser()), source.sha256, arch, shape)
    except TeacherFileError as err:
        raise ConfigError(f"{key}.checkpoint", str(err)) from None


@functools.lru_cache(maxsize=32)
def _checked_file(path: str, sha256: str | None, arch: str, shape: tuple[int, int] | None) -> str:
    """:func:`check_teacher_file` once per file content (its sha256), architecture and data shape."""
    classes, chans = shape if shape is not None else (None, None)
    return check_teacher_file(Path(path), arch, classes, chans).layout


def load_source(source: TeacherSource, arch: str, num_classes: int, in_chans: int, img_size: int,
                log: Callable[[str], None] = print) -> tuple[Network, dict[str, Any]]:
    """A teacher the suite does not train, loaded for its verification job: the checkpoint (its sha256 checked
    again, as the job sees it; any layout :func:`read_teacher` reads, tensors only) or timm's pretrained weights
    from the local cache. Returns the network and what the file said (layout, skipped entries, stated top-1)."""
    if not source.checkpoint:
        return pretrained_network(arch, num_classes, in_chans), {}
    path = Path(source.checkpoint).expanduser()
    actual = store.sha256_file(path)
    if actual != source.sha256:
        raise TeacherNotReadyError(f"{path}: sha256 {actual} does not match the suite's {source.sha256}")
    network, read = read_teacher(path, arch, num_classes, in_chans, img_size)
    log(f"teacher {arch}: {path} read as a {read.layout} file"
        + (f" (skipped: {', '.join(read.skipped)})" if read.skipped else ""))
    return network, {"file_layout": read.layout, "skipped_entries": list(read.skipped),
                     "stated_top1": read.stated_top1}


def check_measured_top1(source: TeacherSource, arch: str, measured: float, log: Callable[[str], None] = print) -> None:
    """Refuse a teacher whose measured test top-1 is off the suite's expected ``top1`` by more than its tolerance
    (:class:`TeacherNotReadyError`: no student distils from it)."""
    origin = f"checkpoint {source.checkpoint}" if source.checkpoint else "pretrained"
    what = f"teacher {arch} ({origin})"
    log(f"{what}: top-1 {measured:.2f} on the test split (expected {source.top1})")
    if source.top1 is not None and abs(measured - source.top1) > source.tolerance:
        raise TeacherNotReadyError(f"{what} reaches top-1 {measured:.2f} on the test split, not the "
                                   f"expected {source.top1:.2f} +- {source.tolerance}: no student distils from it")


def save_converted(network: Network, out: Path) -> str:
    """Write ``network``'s state dict in kdbench's format (atomically, tensors only); return its sha256."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, buffer)
    store.atomic_write_bytes(Path(out), buffer.getvalue())
    return store.sha256_file(Path(out))


# ------------------------------------------------------------------------------------------------ trained here


def teacher_dir_for(run_dir: Path, teacher_id: str) -> Path:
    """The teacher job folder of a student run (``<suite>/teachers/<id>`` beside ``<suite>/runs``)."""
    return run_dir.parent.parent / "teachers" / teacher_id


def load_job_teacher(run_dir: Path, teacher_id: str, arch: str, num_classes: int, in_chans: int,
                     img_size: int) -> Network:
    """The teacher a student run distils from: its teacher job's weights, checked against the sha256 its record
    states, loaded tensors-only."""
    tdir = teacher_dir_for(run_dir, teacher_id)
    record = store.load_record(tdir)
    if record is None or record.state != "done" or record.artifacts is None or not record.artifacts.weights_sha256:
        raise TeacherNotReadyError(f"teacher {teacher_id} has no finished record in {tdir}")
    weights = tdir / store.WEIGHTS
    expected = record.artifacts.weights_sha256
    actual = store.sha256_file(weights)
    if actual != expected:
        raise TeacherNotReadyError(f"{weights}: sha256 {actual[:12]}... does not match its record "
                                   f"({expected[:12]}...); delete {tdir} to retrain the teacher")
    try:
        network, _ = read_teacher(weights, arch, num_classes, in_chans, img_size)
    except TeacherFileError as err:
        raise TeacherNotReadyError(f"{err}; delete {tdir} to retrain the teacher") from None
    return network


# ------------------------------------------------------------------------------------------------ pretrained


def pretrained_network(name: str, num_classes: int, in_chans: int) -> Network:
    """timm's pretrained weights for ``name`` from the local cache only (HF_HUB_OFFLINE): a missing file is a
    clear error, never a download."""
    import timm

    os.environ["HF_HUB_OFFLINE"] = "1"
    _require_cached_weights(name)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans)
    except Exception as err:  # timm raises several kinds (hub offline, missing file, no weights for the name)
        raise TeacherNotReadyError(f"no pretrained weights for '{name}' in the local cache ({type(err).__name__}: "
                                   f"{err}); put them in the timm/Hugging Face cache or give a checkpoint") from None
    return Network(model, name=name).eval().requires_grad_(False)


def _require_cached_weights(name: str) -> None:
    """Pretrained weights must already be on this machine (Hugging Face cache or torch's hub cache): raise before
    timm could start a download (or sit in the hub client's retries)."""
    import torch.hub

    try:
        from timm.models import get_pretrained_cfg
        from timm.models._builder import _resolve_pretrained_source

        source, location = _resolve_pretrained_source(get_pretrained_cfg(name).to_dict())
    except Exception:  # an unknown tag or a timm without these helpers: timm's own error will name it
        return
    if source == "hf-hub":
        from huggingface_hub import try_to_load_from_cache

        repo = str(location).split("@")[0]
        if not any(isinstance(try_to_load_from_cache(repo, f), str)
                   for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
            raise TeacherNotReadyError(f"no pretrained weights for '{name}' in the local cache (Hugging Face repo "
                                       f"{repo} is not cached); copy them there or give a checkpoint")
    elif source == "url":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(str(location))
        if not cached.exists():
            raise TeacherNotReadyError(f"no pretrained weights for '{name}' in the local cache ({cached} is missing); "
                                       f"copy them there or give a checkpoint")


# ------------------------------------------------------------------------------------------------ import


@dataclass(frozen=True)
class ImportReport:
    """What ``python -m kdbench teacher import`` found: the file read, the converted file written (if asked), the
    top-1 measured on a dataset's test split (if given) beside the published one."""

    source: TeacherFile
    source_sha256: str
    out: Path | None
    out_sha256: str | None
    dataset: str
    measured_top1: float | None
    published_top1: float | None
    published_source: str | None


def default_dataset(arch: str) -> str:
    """The dataset a teacher architecture is published on: CIFAR-100 for the ``_cifar`` zoo, else ImageNet."""
    return "cifar100" if arch.endswith("_cifar") else "imagenet"


def import_teacher(path: Path, arch: str, out: Path | None = None, dataset: str | None = None,
                   data_root: str | None = None, batch_size: int = 256) -> ImportReport:
    """Read a teacher file in any supported layout as ``arch``; write it in kdbench's format to ``out``; with
    ``data_root``, measure its top-1 on the dataset's test split. Raises :class:`TeacherFileError`."""
    from kdbench.data import dataset_registry
    from kdbench.reference import published_teacher

    dataset = dataset or default_dataset(arch)
    source = dataset_registry.get(dataset)(root=data_root) if data_root else None
    shape = source.known_shape() if source is not None else None
    path = Path(path).expanduser().resolve()
    out = Path(out).expanduser().resolve() if out is not None else None
    network, read = read_teacher(path, arch, *(shape or (None, None)))
    out_sha = save_converted(network, out) if out is not None else None
    measured = None
    if source is not None:
        from kdbench.engine import evaluate

        splits = source.load()
        measured = evaluate(network, lambda x, o: o.logits, splits.test, batch_size).top1
    published = published_teacher(arch, dataset)
    return ImportReport(read, store.sha256_file(path), Path(out) if out is not None else None, out_sha, dataset,
                        measured, None if published is None else float(published["top1"]),
                        None if published is None else str(published["source"]))
