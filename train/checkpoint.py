"""Checkpoints: written atomically, read only with ``torch.load(weights_only=True)``.

A toolkit checkpoint is a dict of plain types and tensors, so the restricted
unpickler of ``weights_only=True`` can read it; it carries everything needed to
rebuild the model from the file alone. A bare ``state_dict`` saved the seed's way
(``torch.save(model.state_dict(), "model.pth")``) is accepted too, with the
seed's defaults filled in for what it does not say.
"""

from __future__ import annotations

import os
import pickletools
import platform
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.atomic import atomic_path, file_sha256
from toolkit.errors import CheckpointError
from toolkit.inspect import MODEL_KINDS, identify
from toolkit.preprocess import MNIST, PreprocessSpec

FORMAT = "toolkit.mlp-checkpoint"  # the name of version 1 (MLP only), kept so every reader recognises both
FORMAT_VERSION = 2  # 2: "arch" names the architecture (train.architectures); absent in version 1 = "mlp"
DEFAULT_CLASSES = [str(i) for i in range(10)]


@dataclass
class LoadedCheckpoint:
    path: Path
    sha256: str
    kind: str  # "toolkit", "state_dict" or "module" (a user factory, toolkit.export.user_module)
    state_dict: dict
    config: "object"  # a train.architectures config (MLPConfig, CNNConfig)
    preprocess: PreprocessSpec
    classes: list[str]
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    created: str | None = None
    output_kind: str = "logits"  # "probabilities" for a user's module that ends in softmax


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    try:
        import torchvision

        out["torchvision"] = str(torchvision.__version__)
    except Exception:
        pass
    from toolkit import __version__

    out["toolkit"] = __version__
    return out


def save_checkpoint(path: str | os.PathLike, *, model, record: dict, classes: list[str] = DEFAULT_CLASSES,
                    preprocess: PreprocessSpec = MNIST, replace: bool = False) -> None:
    """``record``: how the model was trained, {"recipe": {...}, "metrics": {...}} (the metrics JSON holds it too)."""
    import datetime
    import io

    import torch

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "arch": model.config.arch,
        "config": model.config.to_dict(),
        "preprocess": preprocess.to_dict(),
        "classes": list(classes),
        "recipe": record["recipe"],
        "metrics": record["metrics"],
        "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    # Serialised in memory first: torch's own file writer turns a full disk into a RuntimeError,
    # a plain write gives the OSError that atomic_path reports as one line naming the file.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path, replace=replace) as tmp:
        tmp.write_bytes(buffer.getbuffer())


# Modules whose globals torch.save itself writes into a checkpoint of tensors and plain data.
DATA_MODULES = ("torch", "collections")


def _load_failure(path: Path, error: Exception) -> str:
    """Why torch.load refused a file that looks like a checkpoint; code-execution is said only when it is true.

    Classified by the exception's type and by what the pickle references, read from its opcodes (nothing
    runs), never by torch's message, whose wording changes between releases ("Unsupported global" in one,
    "unsupported GLOBAL posix.system whose module posix is blocked" in another).
    """
    if isinstance(error, EOFError):
        return "truncated file (ended in the middle of the data)"
    archive = zipfile.is_zipfile(path)
    if archive:
        import torch

        try:  # torch's public static check: the globals of the archive's pickle that weights_only refuses
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # it reads protocol 2 only (torch.save's); the opcodes below read every protocol
            unsafe = None
        if unsafe is not None:  # it could read the pickle: what it names is what weights_only refused
            return _refused(unsafe) if unsafe else f"damaged or truncated checkpoint archive ({type(error).__name__})"
    names = pickle_globals(_archive_pickle(path) if archive else path.read_bytes())
    if names is None:
        return (f"damaged or truncated checkpoint archive ({type(error).__name__})" if archive
                else "damaged or truncated pickle")
    foreign = [n for n in names if n.split(".")[0] not in DATA_MODULES] if archive else names
    if foreign:
        return _refused(foreign)
    if archive:
        return f"damaged or truncated checkpoint archive ({type(error).__name__})"
    return "a pickle of plain Python data, not a PyTorch checkpoint"


def _archive_pickle(path: Path) -> bytes:
    """The pickle of a torch.save archive (``<name>/data.pkl``); empty when there is none or it cannot be read."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
            return z.read(name) if name else b""
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError):  # a damaged member (CRC, bad compression)
        return b""


def pickle_globals(data: bytes) -> list[str] | None:
    """The module.name of every global a pickle references, read from its opcodes without running any; None when
    the stream is damaged or cut. STACK_GLOBAL takes its two names from strings pushed directly or through the
    memo (any protocol)."""
    names: list[str] = []
    stack: list = []  # recently pushed values that may be names (strings), None for anything else
    memo: dict = {}
    if not data:
        return None
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                names.append(arg.replace(" ", "."))
                stack.append(None)
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(str(v) for v in stack[-2:]))
                stack[-2:] = [None]
            elif op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1] if stack else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
            else:
                stack.append(arg if isinstance(arg, str) else None)
    except Exception:  # pickletools raises ValueError and friends on a cut or corrupt stream
        return None
    return list(dict.fromkeys(names))


def _refused(names: list[str]) -> str:
    what = f" ({_short(list(dict.fromkeys(names)))})" if names else ""
    return (f"refused: the pickle references code or types that weights_only=True does not allow{what}; "
            "it could execute code on load. Only tensors and plain data are accepted")


def read_weights_only(path: str | os.PathLike):
    """What ``torch.load(path, weights_only=True)`` returns; CheckpointError saying why a file is refused."""
    import torch

    path = Path(path)
    kind = identify(path, CheckpointError, expected="a PyTorch checkpoint")
    if kind != "checkpoint":
        raise CheckpointError(path, f"is {MODEL_KINDS[kind]}, not a PyTorch checkpoint (export takes the .pth file)")
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols before refusing a file; the refusal is what we report.
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad input; every one is a user-facing file problem
        raise CheckpointError(path, _load_failure(path, e)) from None


def load_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    import torch

    from .architectures import ARCHITECTURES, config_from_dict
    from .model import MLPConfig

    path = Path(path)
    obj = read_weights_only(path)
    digest = file_sha256(path)

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("state_dict"), dict) or not all(
                isinstance(v, torch.Tensor) for v in obj["state_dict"].values()):
            raise CheckpointError(path, "toolkit checkpoint whose state_dict is not a dict of tensors")
        arch = obj.get("arch", "mlp")
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise CheckpointError(path, f"toolkit checkpoint of an architecture this toolkit does not know ({arch!r}; "
                                        f"it knows {', '.join(ARCHITECTURES)}): written by a newer toolkit?")
        try:
            loaded = LoadedCheckpoint(
                path=path, sha256=digest, kind="toolkit",
                state_dict=dict(obj["state_dict"]),
                config=config_from_dict(arch, obj["config"]),
                preprocess=PreprocessSpec.from_dict(obj["preprocess"]),
                classes=[str(c) for c in obj["classes"]],
                recipe=dict(obj.get("recipe") or {}),
                metrics=dict(obj.get("metrics") or {}),
                versions=dict(obj.get("versions") or {}),
                created=obj.get("created"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"toolkit checkpoint with a malformed field ({e})") from None
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        loaded = LoadedCheckpoint(path=path, sha256=digest, kind="state_dict", state_dict=dict(obj),
                                  config=MLPConfig(), preprocess=MNIST, classes=list(DEFAULT_CLASSES))
    else:
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a toolkit checkpoint or a state_dict")
    _check_state_dict(loaded)
    return loaded


def _check_state_dict(loaded: LoadedCheckpoint) -> None:
    """Name exactly what differs from the architecture, and refuse non-finite weights."""
    from .architectures import build

    problems = state_dict_problems(build(loaded.config).state_dict(), loaded.state_dict)
    if problems:
        raise CheckpointError(loaded.path, f"not a state_dict of the {loaded.config.describe()}: "
                                           + "; ".join(problems))
    if len(loaded.classes) != loaded.config.num_classes:  # every prediction would carry another class's name
        raise CheckpointError(loaded.path, f"the network has {loaded.config.num_classes} outputs but the checkpoint's "
                                           f"class list names {len(loaded.classes)} classes ({_short(loaded.classes)})")
    check_finite(loaded.path, loaded.state_dict)


def state_dict_problems(expected: dict, got: dict) -> list[str]:
    """Missing and unexpected keys and shape mismatches, each list shortened to a few names; empty when they fit."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [f"{k} is {tuple(got[k].shape)}, expected {tuple(v.shape)}" for k, v in expected.items()
                  if k in got and tuple(got[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_short(mismatched)}")
    return problems


def check_finite(path: Path, got: dict) -> None:
    """Refuse NaN/Inf weights and negative BatchNorm variances before they reach a model."""
    import torch

    for k, v in got.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(path, f"tensor {k} has {bad} NaN/Inf value(s); refusing to use it")
        if k.endswith("running_var") and bool((v < 0).any()):
            # a negative variance makes BatchNorm compute sqrt of a negative number: NaN logits
            raise CheckpointError(path, f"tensor {k} has negative variances; refusing to use it")


def _short(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def build_model(loaded: LoadedCheckpoint):
    """The model in eval mode, weights loaded strictly."""
    from .architectures import build

    model = build(loaded.config)
    model.load_state_dict(loaded.state_dict, strict=True)
    return model.eval()


