"""Run Ultralytics without ever touching the network or pip.

Call :func:`ensure_offline` (or use :func:`import_ultralytics`) before the first
``import ultralytics`` in a process. Ultralytics otherwise probes DNS at import, checks
PyPI for a newer version at every train, downloads ``Arial.ttf`` at every train/val
(neither ``YOLO_OFFLINE`` nor ``plots=False`` stops that: only a local copy of the font
does), sends telemetry at the end of each call, runs ``pip install faster-coco-eval`` from
``val(save_json=True)`` and downloads weights for ``YOLO('<name>.pt')`` when the file is
missing and for the AMP check on a GPU.

What this module does about each:

- ``YOLO_OFFLINE=true``: ``is_online()`` returns False without a DNS probe, so ``ONLINE``
  is False and every "if ONLINE" path (PyPI check, hub, AutoUpdate) is skipped.
- ``YOLO_AUTOINSTALL=false``: ``check_requirements`` never runs pip.
- A private ``YOLO_CONFIG_DIR`` holding ``settings.json`` (sync, integrations and hints off)
  and the two fonts (matplotlib's bundled DejaVuSans copied under both names).
- :func:`resolve_weights` refuses a ``.pt`` that does not exist instead of letting
  Ultralytics download it; training always passes ``amp=False`` (no AMP-check weights).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Settings that would otherwise sync, log to third-party services or print hints.
OFFLINE_SETTINGS: dict[str, Any] = {
    "sync": False,
    "api_key": "",
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}
FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")

_done_for: str | None = None


def default_config_dir() -> Path:
    """``$HITL_HOME/ultralytics`` when HITL_HOME is set, else a per-user temporary folder."""
    home = os.environ.get("HITL_HOME")
    if home:
        return Path(home).absolute() / "ultralytics"
    return Path(tempfile.gettempdir()) / f"hitl-ultralytics-{os.getuid()}"


def _bundled_font() -> Path:
    """matplotlib's DejaVuSans.ttf (matplotlib is a dependency; the file ships in its wheel)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed: no local font for Ultralytics")
    base = Path(next(iter(spec.submodule_search_locations)))
    font = base / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not font.is_file():
        raise RuntimeError(f"{font} is missing: no local font for Ultralytics")
    return font


def _place_fonts(config_dir: Path) -> None:
    font = None
    # Ultralytics' USER_CONFIG_DIR is $YOLO_CONFIG_DIR/Ultralytics (it appends the name).
    for folder in (config_dir / "Ultralytics", config_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for name in FONT_NAMES:
            target = folder / name
            if target.is_file() and target.stat().st_size > 0:
                continue
            font = font or _bundled_font()
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            shutil.copyfile(font, tmp)
            os.replace(tmp, target)  # atomic: another process may be reading it


def ensure_offline(config_dir: Path | None = None, *, verbose: bool | None = None) -> Path:
    """Make this process's Ultralytics offline; idempotent, cheap after the first call.

    Sets the environment before Ultralytics is imported; when it already is imported (by
    someone who did not call this first), patches its module-level flags as well.

    :param config_dir: the Ultralytics config folder to own. Default: an existing
        ``YOLO_CONFIG_DIR``, else :func:`default_config_dir`.
    :param verbose: ``YOLO_VERBOSE``; None keeps the environment's value (default quiet).
    :return: the config folder.
    """
    global _done_for
    if config_dir is None:
        config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or default_config_dir())
    config_dir = Path(config_dir).absolute()
    if verbose is not None:
        os.environ["YOLO_VERBOSE"] = "true" if verbose else "false"
    else:
        os.environ.setdefault("YOLO_VERBOSE", "false")
    if _done_for == str(config_dir) and "ultralytics" in sys.modules:
        return config_dir
    os.environ["YOLO_OFFLINE"] = "true"  # Ultralytics compares against "true"/"1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    _place_fonts(config_dir)
    if "ultralytics" in sys.modules:
        _patch_loaded()
    _done_for = str(config_dir)
    return config_dir


def _patch_loaded() -> None:
    """Turn off online paths of an Ultralytics that is already imported."""
    from ultralytics import utils
    from ultralytics.utils import checks

    for module in (utils, checks):
        if getattr(module, "ONLINE", False):
            module.ONLINE = False
        if getattr(module, "AUTOINSTALL", False):
            module.AUTOINSTALL = False
    try:
        current = {k: utils.SETTINGS.get(k) for k in OFFLINE_SETTINGS}
        wanted = {k: v for k, v in OFFLINE_SETTINGS.items() if k in utils.SETTINGS.defaults}
        if any(current.get(k) != v for k, v in wanted.items()):
            utils.SETTINGS.update(wanted)
    except Exception as exc:  # a read-only settings file must not stop training
        log.warning("could not update Ultralytics settings: %s", exc)
    try:
        from ultralytics.utils import events

        if getattr(events, "events", None) is not None:
            events.events.enabled = False
    except Exception:  # pragma: no cover - module layout of other versions
        pass


def import_ultralytics():
    """Return the ``ultralytics`` module, imported with the offline settings in force."""
    ensure_offline()
    import ultralytics

    _patch_loaded()
    return ultralytics


def resolve_weights(weights: str | os.PathLike[str]) -> Path:
    """Return an existing checkpoint path, or raise FileNotFoundError.

    ``YOLO('yolov8n.pt')`` with a missing file downloads it; we never let it.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {str(weights)!r} does not exist (Ultralytics would try to download it; "
            "give a local .pt path, 'builtin', or a model YAML to train from scratch)"
        )
    return path.absolute()


def load_offline_yolo(weights: str | os.PathLike[str], **kwargs: Any):
    """``ultralytics.YOLO`` on a local checkpoint or a model YAML, never downloading."""
    ultralytics = import_ultralytics()
    text = str(weights)
    if text.endswith((".yaml", ".yml")):
        return ultralytics.YOLO(text, **kwargs)
    return ultralytics.YOLO(str(resolve_weights(weights)), **kwargs)


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``0`` (the first CUDA GPU) when one is present, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "0" if torch.cuda.is_available() else "cpu"
