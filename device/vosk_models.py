"""Where Vosk models come from: earmark resolves and fetches them itself.

Vosk's own ``Model(lang=...)`` / ``model_name`` downloads over the internet and calls
``sys.exit`` on an unknown name, which would kill a device runtime. So earmark only ever hands
Vosk a directory it found, in this order:

1. ``--vosk-model DIR`` (an error if it is not a model),
2. ``$EARMARK_VOSK_MODEL`` (an error if set and not a model),
3. the usual Vosk folders: ``$VOSK_MODEL_PATH``, ``/usr/share/vosk``, ``~/.cache/vosk`` — each may
   be a model itself or hold model folders (an English ``vosk-model-small-en-us*`` is preferred,
   then any ``*en-us*``, then the first by name).

``earmark models fetch vosk-small-en-us`` downloads the official small English model for users
with internet, checks its SHA-256 before unpacking anything, and unpacks it safely (no member
may land outside the destination) into ``~/.cache/vosk`` where step 3 finds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from earmark.errors import EarmarkError, ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    name: str
    url: str
    sha256: str
    folder: str  # top-level folder inside the archive


KNOWN_MODELS = {
    "vosk-small-en-us": KnownModel(
        "vosk-small-en-us",
        "https://alphacephei.com/vosk/models/vosk-model-small-en-us-0.15.zip",
        "30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498",
        "vosk-model-small-en-us-0.15",
    ),
}


def default_dirs() -> list[Path]:
    dirs = []
    if env := os.environ.get("VOSK_MODEL_PATH"):
        dirs.append(Path(env))
    dirs += [Path("/usr/share/vosk"), Path.home() / ".cache" / "vosk"]
    return dirs


def is_model_dir(path: Path) -> bool:
    """A Vosk model folder has an acoustic model and its config."""
    has_am = (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()
    has_conf = (path / "conf" / "model.conf").is_file() or (path / "conf" / "mfcc.conf").is_file()
    return has_am and has_conf


def _pick(folder: Path) -> Path | None:
    if is_model_dir(folder):
        return folder
    if not folder.is_dir():
        return None
    try:
        models = sorted(p for p in folder.iterdir() if p.is_dir() and is_model_dir(p))
    except OSError:
        return None
    for prefer in ("vosk-model-small-en-us", "en-us"):
        for p in models:
            if prefer in p.name:
                return p
    return models[0] if models else None


def resolve_vosk_model(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The model directory to use, or None when there is none (see the module doc for order)."""
    for label, value in (("--vosk-model", explicit), ("EARMARK_VOSK_MODEL", None)):
        if label == "EARMARK_VOSK_MODEL":
            value = os.environ.get("EARMARK_VOSK_MODEL") or None
        if value is None:
            continue
        path = Path(value).expanduser()
        found = _pick(path)
        if found is None:
            raise ModelError(
                f"{path}: not a Vosk model folder (from {label}; expected am/final.mdl and conf/)"
            )
        return found
    for folder in default_dirs():
        found = _pick(folder)
        if found is not None:
            log.debug("found Vosk model %s", found)
            return found
    return None


def _download(url: str, dest: Path, progress: bool) -> str:
    """Stream ``url`` to ``dest``; return the SHA-256 of what arrived."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="downloading",
                      disable=not progress) as bar:  # fmt: skip
                while block := resp.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise EarmarkError(f"{url}: download failed ({reason})") from None
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> list[str]:
    """Unpack a zip into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for name in names:
                target = (dest / name).resolve()
                if target != root and root not in target.parents:
                    raise EarmarkError(f"{archive.name}: refusing unsafe path {name!r} in archive")
            zf.extractall(dest)
    except zipfile.BadZipFile:
        raise EarmarkError(f"{archive.name}: not a zip archive") from None
    return names


def fetch_model(
    name: str,
    url: str | None = None,
    dest: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack a known model; return its directory.

    ``url`` and ``sha256`` override the official ones (a mirror, or a test server). A digest
    mismatch deletes the download and raises before anything is unpacked.
    """
    known = KNOWN_MODELS.get(name)
    if known is None:
        raise EarmarkError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    url = url or known.url
    expected = (sha256 or known.sha256).lower()
    target_root = Path(dest).expanduser() if dest else Path.home() / ".cache" / "vosk"
    target_root.mkdir(parents=True, exist_ok=True)
    final = target_root / known.folder
    if is_model_dir(final):
        log.info("%s is already unpacked at %s", name, final)
        return final
    with tempfile.TemporaryDirectory(dir=target_root, prefix=".fetch-") as tmp:
        archive = Path(tmp) / "model.zip"
        got = _download(url, archive, progress)
        if got != expected:
            raise EarmarkError(
                f"{url}: SHA-256 mismatch (expected {expected}, got {got}); nothing was unpacked"
            )
        unpack = Path(tmp) / "unpacked"
        unpack.mkdir()
        _safe_extract(archive, unpack)
        found = _pick(unpack / known.folder) or _pick(unpack)
        if found is None:
            raise EarmarkError(f"{url}: the archive holds no Vosk model (no am/final.mdl)")
        if final.exists():
            shutil.rmtree(final)
        shutil.move(str(found), final)
    return final
