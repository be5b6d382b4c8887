"""A zoo entry's file, fetched and verified: :func:`fetch`, :func:`verify`, :func:`read_entry_state`.

Sources, tried in order:

1. the mirror folder ``$VLP_ZOO_DIR`` holding ``entry.filename``: the user's copy, verified and used in
   place; a wrong hash is refused and the file is left as it is;
2. the cache folder ``$VLP_ZOO_CACHE`` (default ``~/.cache/vlp/zoo``) holding ``entry.filename`` from an
   earlier fetch;
3. ``entry.hub``: the Hugging Face file at its revision, through ``huggingface_hub`` into the Hub's own
   cache (shared with ``transformers``), verified against the Hub's LFS sha256;
4. ``entry.url`` (``http(s)://``, ``file://``): downloaded to ``<cache>/<filename>.part`` (an interrupted
   download resumes with an HTTP Range request), verified, then renamed into the cache; a file with a wrong
   hash is not kept.

The sha256 a file must have: ``entry.sha256`` where the entry gives it; otherwise the file's hash must start
with ``entry.sha256_prefix`` (torch.hub's convention) where given, match the Hub's LFS hash for a Hub file,
and match the hash pinned in the lock file ``$VLP_ZOO_LOCK`` (default ``<cache>/lock.json``, ``{entry
name: sha256}``), where the first verified fetch pins it; a later file with another hash is refused.

Offline (``VLP_OFFLINE=1`` or ``offline=True``): no network at all, for ``huggingface_hub`` too (only its
cache is read); ``file://`` URLs still work. A file that cannot be had fails naming the exact path to put it
at and the remote sources.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock
from torch import Tensor

from vlp.checkpoints import torch_load
from vlp.errors import UserError
from vlp.zoo.download import download
from vlp.zoo.registry import Entry, HubFile

MIRROR_ENV = "VLP_ZOO_DIR"
CACHE_ENV = "VLP_ZOO_CACHE"
LOCK_ENV = "VLP_ZOO_LOCK"
OFFLINE_ENV = "VLP_OFFLINE"
DEFAULT_CACHE = "~/.cache/vlp/zoo"


class FetchError(UserError):
    """A zoo file that could not be downloaded, or whose sha256 is not the expected one."""


def cache_dir() -> Path:
    """``$VLP_ZOO_CACHE``, default ``~/.cache/vlp/zoo``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def lock_path() -> Path:
    """``$VLP_ZOO_LOCK``, default ``<cache>/lock.json``."""
    return Path(os.environ.get(LOCK_ENV) or cache_dir() / "lock.json").expanduser()


def mirror_dir() -> Path | None:
    """``$VLP_ZOO_DIR``, or ``None`` when it is not set."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` when given, else whether ``$VLP_OFFLINE`` is 1/true/yes/on."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_lock(path: Path | None = None) -> dict[str, str]:
    """The pinned hashes ``{entry name: sha256}``; empty when there is no lock file yet."""
    path = lock_path() if path is None else path
    if not path.is_file():
        return {}
    try:
        pins = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FetchError(f"zoo lock file {path}: not valid JSON ({error}); fix or delete it") from error
    if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
        raise FetchError(f"zoo lock file {path}: not a JSON object of entry name -> sha256; fix or delete it")
    return pins


def _mutex(name: str) -> str:
    """The inter-process lock guarding the file ``name`` (kept in ``<cache>/.locks``)."""
    folder = cache_dir() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{name}.lock")


def _pin(entry: Entry, digest: str) -> None:
    """Write ``entry``'s hash into the lock file (atomically) unless the entry gives its own."""
    if entry.sha256 is not None:
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_mutex(path.name)):
        pins = read_lock(path)
        if pins.get(entry.name) == digest:
            return
        pins[entry.name] = digest
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(dict(sorted(pins.items())), tmp, indent=2)
            tmp.write("\n")
        os.replace(tmp.name, path)


def _check(entry: Entry, path: Path, where: str, hub_sha256: str | None = None) -> str:
    """``path``'s sha256, or a :class:`FetchError` naming ``where`` (the file and what happens to it),
    the expected and actual hashes and where the expected one comes from."""
    actual = sha256_of(path)

    def refuse(expected: str, origin: str) -> FetchError:
        return FetchError(
            f"zoo {entry.name}: {where} has sha256 {actual}, expected {expected} ({origin}); refused"
        )

    if entry.sha256 is not None:
        if actual != entry.sha256.lower():
            raise refuse(entry.sha256.lower(), "the entry's published sha256")
        return actual
    if entry.sha256_prefix is not None and not actual.startswith(entry.sha256_prefix.lower()):
        raise refuse(f"{entry.sha256_prefix.lower()}...", "the prefix the publisher put in the file name")
    if hub_sha256 is not None and actual != hub_sha256:
        raise refuse(hub_sha256, "the Hub's LFS sha256 of the file")
    pinned = read_lock().get(entry.name)
    if pinned is not None and actual != pinned:
        raise refuse(
            pinned,
            f"pinned in {lock_path()} by its first verified fetch; if the publisher changed the file on "
            f'purpose, delete the "{entry.name}" line from {lock_path()}',
        )
    return actual


def verify(entry: Entry, path: str | os.PathLike) -> str:
    """The sha256 of ``path`` when it is the file ``entry`` expects (published hash, prefix, lock pin);
    otherwise a :class:`FetchError` naming the file and both hashes. Pins nothing."""
    return _check(entry, Path(path), str(path))


def _accept(entry: Entry, path: Path, where: str, hub_sha256: str | None = None) -> Path:
    _pin(entry, _check(entry, path, where, hub_sha256))
    return path


def _target(entry: Entry) -> Path:
    """Where a user puts the file by hand: the mirror folder when set, else the cache."""
    mirror = mirror_dir()
    return (mirror if mirror is not None else cache_dir()) / entry.filename


def pinned_sha256(entry: Entry) -> str | None:
    """The sha256 the lock file pins for ``entry``, if a fetch has pinned one."""
    return read_lock().get(entry.name)


def local_file(entry: Entry) -> Path | None:
    """Where ``entry``'s file is on this machine without any download (mirror, cache, or the Hugging
    Face cache), not yet verified; ``None`` when nowhere."""
    mirror = mirror_dir()
    if mirror is not None and (mirror / entry.filename).is_file():
        return mirror / entry.filename
    if (cache_dir() / entry.filename).is_file():
        return cache_dir() / entry.filename
    if entry.hub is not None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(entry.hub.repo_id, entry.hub.filename, revision=entry.hub.revision)
        if isinstance(found, str):
            return Path(found)
    return None


def _cannot_fetch(entry: Entry, why: str) -> str:
    sources = ", ".join(entry.source_names()) or "none"
    return (
        f"zoo {entry.name}: {why}. Put the file at {_target(entry)} (remote sources: {sources}), "
        f"or set {MIRROR_ENV} to a folder holding {entry.filename}."
    )


def _quiet_tqdm() -> type:
    from tqdm.auto import tqdm

    class Quiet(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


def _hub_sha256(hub: HubFile) -> str | None:
    """The LFS sha256 the Hub lists for the file; ``None`` for a file kept in git itself."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    infos = HfApi().get_paths_info(hub.repo_id, [hub.filename], revision=hub.revision)
    for info in infos:
        if isinstance(info, RepoFile) and info.path == hub.filename and info.lfs is not None:
            return info.lfs.sha256.lower()
    return None


def _from_hub(entry: Entry, hub: HubFile, offline: bool, progress: bool) -> Path | None:
    """The Hub file in the Hub's cache, verified; ``None`` offline when the Hub's cache lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    source = f"hf:{hub.repo_id}/{hub.filename}@{hub.revision}"
    try:
        expected = None if offline or entry.sha256 is not None else _hub_sha256(hub)
        local = hf_hub_download(
            hub.repo_id,
            hub.filename,
            revision=hub.revision,
            local_files_only=offline,
            tqdm_class=None if progress else _quiet_tqdm(),
        )
    except Exception as error:  # huggingface_hub's HTTP client raises its own errors besides OSErrors
        if offline and isinstance(error, LocalEntryNotFoundError):
            return None
        raise FetchError(_cannot_fetch(entry, f"could not download {source} ({error})")) from error
    return _accept(entry, Path(local), f"{local} (from {source}, in the Hugging Face cache)", expected)


def _from_url(entry: Entry, url: str, dest: Path, progress: bool) -> Path:
    """``url`` downloaded through ``<dest>.part``, verified, and renamed to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(_mutex(dest.name)):  # one download per file, also across processes (DDP ranks)
        if dest.is_file():  # another process finished it while this one waited
            return _accept(entry, dest, f"{dest} (in the cache {cache_dir()}; delete it to fetch it again)")
        part = dest.with_name(dest.name + ".part")
        try:
            download(url, part, progress=progress)
        except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, HTTPError: OSErrors
            raise FetchError(_cannot_fetch(entry, f"could not download {url} ({error})")) from error
        try:
            digest = _check(entry, part, f"the file downloaded from {url} (not kept)")
        except FetchError:
            part.unlink()
            raise
        os.replace(part, dest)
    _pin(entry, digest)
    return dest


def fetch(entry: Entry, *, offline: bool | None = None, progress: bool = True) -> Path:
    """A verified local copy of ``entry``'s file (the module docstring gives the sources and checks).

    Raises:
        FetchError: a file with another sha256 than expected, or a failed download; both name the file
            or URL, and a failed download the path to put the file at.
        FileNotFoundError: offline, and no local source has the file; names the path to put it at.
    """
    offline = is_offline(offline)
    mirror = mirror_dir()
    if mirror is not None and (mirror / entry.filename).is_file():
        path = mirror / entry.filename
        return _accept(entry, path, f"{path} (in the mirror folder {MIRROR_ENV}; left as it is)")
    cached = cache_dir() / entry.filename
    if cached.is_file():
        return _accept(entry, cached, f"{cached} (in the cache {cache_dir()}; delete it to fetch it again)")
    if entry.hub is not None:
        path = _from_hub(entry, entry.hub, offline, progress)
        if path is not None:
            return path
    if entry.url is not None and not (offline and not entry.url.startswith("file:")):
        return _from_url(entry, entry.url, cached, progress)
    looked = [str(mirror / entry.filename)] if mirror is not None else []
    looked.append(str(cached))
    if entry.hub is not None:
        looked.append("the Hugging Face cache")
    why = "no local copy" if offline else "the entry has no remote source"
    mode = f"offline ({OFFLINE_ENV}=1 or offline=True), " if offline else ""
    raise FileNotFoundError(_cannot_fetch(entry, f"{mode}{why} (looked in {', '.join(looked)})"))


def _state_of(loaded: object, where: str) -> dict[str, Tensor]:
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{where}: holds a {type(loaded).__name__}, not a state dict")
    bad = sorted(
        f"{key!r} ({type(value).__name__})"
        for key, value in loaded.items()
        if not isinstance(key, str) or not isinstance(value, Tensor)
    )
    if bad:
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(f"{where}: not a state dict, these entries are not named tensors: {bad[:20]}{more}")
    return dict(loaded)


def read_entry_state(entry: Entry, path: str | os.PathLike) -> dict[str, Tensor]:
    """The publisher's state dict in ``path``: a ``.safetensors`` file as it is, anything else through
    :func:`vlp.checkpoints.torch_load` and then ``entry.container_key`` (``None``: the file is the state
    dict). Every value must be a tensor."""
    path = Path(path)
    key = entry.container_key
    if path.suffix == ".safetensors":
        if key is not None:
            raise ValueError(
                f"{path}: a safetensors file is one flat state dict, but entry {entry.name} names the "
                f"container key {key!r}"
            )
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = torch_load(path)
    if key is None:
        return _state_of(loaded, str(path))
    if not isinstance(loaded, Mapping) or key not in loaded:
        has = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else f"a {type(loaded).__name__}"
        raise ValueError(f"{path}: no key {key!r} (entry {entry.name}'s container_key); the file has {has}")
    return _state_of(loaded[key], f"{path}[{key!r}]")
