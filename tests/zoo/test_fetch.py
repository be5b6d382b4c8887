"""vlp.zoo.fetch: mirror, cache, Hub and URL sources, sha256 checks, the lock file, resume, offline mode.

No network: a local HTTP server on 127.0.0.1 (in a thread, with the Range support written here) stands in
for the publishers, and for the Hugging Face Hub in the Hub tests; the payload is a tiny safetensors file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from vlp.zoo.fetch import FetchError, fetch, read_entry_state, read_lock, sha256_of, verify
from vlp.zoo.registry import Entry, HubFile, Preprocessing

TENSORS = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.bias": torch.ones(4)}
PAYLOAD = save(TENSORS)
OTHER = save({"a.weight": torch.zeros(2, 3), "b.bias": torch.ones(4)})
SHA = hashlib.sha256(PAYLOAD).hexdigest()
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """Files served by path; every request recorded as (method, path, Range header or None)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.honour_range = True
        self.cut_after: int | None = None  # send only this many bytes of a body, then close
        self.hub_sha: str | None = None  # the LFS sha256 the fake Hub lists
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def do_POST(self) -> None:  # the Hub's paths-info API
                server.requests.append(("POST", self.path, None))
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                repo = re.match(r"/api/models/(.+)/paths-info/", self.path).group(1)
                data = server.files[f"/{repo}/resolve/main/model.safetensors"]
                lfs = {"oid": server.hub_sha, "size": len(data), "pointerSize": 134}
                info = [
                    {
                        "type": "file",
                        "path": "model.safetensors",
                        "oid": "f" * 40,
                        "size": len(data),
                        "lfs": lfs,
                    }
                ]
                body = json.dumps(info).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def answer(self, body: bool) -> None:
                wanted = self.headers.get("Range")
                server.requests.append((self.command, self.path, wanted))
                if self.path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[self.path]
                match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                start = int(match.group(1)) if match and server.honour_range else 0
                if start > len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if match and server.honour_range else 200)
                if match and server.honour_range:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(data[start:][: server.cut_after])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server()
    server.files["/tiny.safetensors"] = PAYLOAD
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An empty cache (and its lock file); no mirror; online."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VLP_ZOO_CACHE", str(cache))
    for name in ("VLP_ZOO_DIR", "VLP_ZOO_LOCK", "VLP_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return {"cache": cache, "lock": cache / "lock.json", "tmp": tmp_path}


def use_mirror(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, content: bytes) -> Path:
    """A mirror folder (``VLP_ZOO_DIR``) holding ``tiny.safetensors`` with ``content``."""
    mirror = dirs["tmp"] / "mirror"
    mirror.mkdir()
    (mirror / "tiny.safetensors").write_bytes(content)
    monkeypatch.setenv("VLP_ZOO_DIR", str(mirror))
    return mirror


def tiny(url: str | None = None, **changes: object) -> Entry:
    entry = Entry(
        name="test:tiny",
        filename="tiny.safetensors",
        converter="timm-vit",
        preprocessing=Preprocessing(32),
        params="10",
        license="MIT",
        figure="none",
        url=url,
    )
    return dataclasses.replace(entry, **changes)


def cache_files(dirs: dict[str, Path]) -> list[str]:
    """The cache's files, but for the folder of inter-process locks."""
    return sorted(p.name for p in dirs["cache"].iterdir() if p.name != ".locks")


def test_http_download_is_verified_pinned_and_then_read_from_the_cache(server: Server, dirs: dict) -> None:
    entry = tiny(f"{server.url}/tiny.safetensors")
    path = fetch(entry, progress=False)
    assert path == dirs["cache"] / "tiny.safetensors" and path.read_bytes() == PAYLOAD
    assert read_lock(dirs["lock"]) == {"test:tiny": SHA}
    assert len(server.gets()) == 1
    assert fetch(entry, progress=False) == path
    assert len(server.requests) == 1  # the second fetch asked the server nothing
    assert cache_files(dirs) == ["lock.json", "tiny.safetensors"]
    state = read_entry_state(entry, path)
    assert state.keys() == TENSORS.keys() and all(torch.equal(state[k], TENSORS[k]) for k in TENSORS)


def test_file_url_download_is_verified_pinned_and_then_read_from_the_cache(dirs: dict) -> None:
    source = dirs["tmp"] / "published" / "tiny.safetensors"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    entry = tiny(source.as_uri())
    path = fetch(entry, progress=False)
    assert path.read_bytes() == PAYLOAD and read_lock(dirs["lock"]) == {"test:tiny": SHA}
    source.unlink()  # the second fetch needs no source
    assert fetch(entry, progress=False) == path
    assert verify(entry, path) == SHA == sha256_of(path)


def test_a_wrong_sha256_is_refused_and_nothing_is_kept(server: Server, dirs: dict) -> None:
    entry = tiny(f"{server.url}/tiny.safetensors", sha256=OTHER_SHA)
    with pytest.raises(FetchError) as error:
        fetch(entry, progress=False)
    message = str(error.value)
    assert SHA in message and OTHER_SHA in message and f"{server.url}/tiny.safetensors" in message
    assert cache_files(dirs) == []  # neither the file nor its .part, and nothing pinned


def test_a_partial_download_is_resumed_with_a_range_request(server: Server, dirs: dict) -> None:
    dirs["cache"].mkdir()
    half = len(PAYLOAD) // 2
    (dirs["cache"] / "tiny.safetensors.part").write_bytes(PAYLOAD[:half])
    path = fetch(tiny(f"{server.url}/tiny.safetensors", sha256=SHA), progress=False)
    assert server.gets() == [("GET", "/tiny.safetensors", f"bytes={half}-")]
    assert path.read_bytes() == PAYLOAD and cache_files(dirs) == ["tiny.safetensors"]


def test_an_interrupted_download_fails_keeping_its_part_and_the_next_fetch_resumes_it(
    server: Server, dirs: dict
) -> None:
    entry = tiny(f"{server.url}/tiny.safetensors", sha256=SHA)
    server.cut_after = 100
    with pytest.raises(FetchError, match=f"ended after 100 of {len(PAYLOAD)} bytes; run again to resume"):
        fetch(entry, progress=False)
    assert (dirs["cache"] / "tiny.safetensors.part").read_bytes() == PAYLOAD[:100]
    server.cut_after = None
    assert fetch(entry, progress=False).read_bytes() == PAYLOAD
    assert [r[2] for r in server.gets()] == [None, "bytes=100-"]


def test_a_server_ignoring_range_gives_a_fresh_download(server: Server, dirs: dict) -> None:
    server.honour_range = False
    dirs["cache"].mkdir()
    half = len(PAYLOAD) // 2
    (dirs["cache"] / "tiny.safetensors.part").write_bytes(b"x" * half)  # appending to it would be wrong
    path = fetch(tiny(f"{server.url}/tiny.safetensors", sha256=SHA), progress=False)
    assert server.gets() == [("GET", "/tiny.safetensors", f"bytes={half}-")]
    assert path.read_bytes() == PAYLOAD


def test_a_part_longer_than_the_remote_file_starts_over(server: Server, dirs: dict) -> None:
    dirs["cache"].mkdir()
    (dirs["cache"] / "tiny.safetensors.part").write_bytes(PAYLOAD + b"junk")
    path = fetch(tiny(f"{server.url}/tiny.safetensors", sha256=SHA), progress=False)
    assert [r[2] for r in server.gets()] == [f"bytes={len(PAYLOAD) + 4}-", None]  # 416, then all of it
    assert path.read_bytes() == PAYLOAD


def test_offline_without_a_local_copy_names_the_path_to_put_it_at(
    server: Server, dirs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{server.url}/tiny.safetensors"
    monkeypatch.setenv("VLP_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        fetch(tiny(url), progress=False)
    assert f"Put the file at {dirs['cache'] / 'tiny.safetensors'} " in str(error.value) and url in str(
        error.value
    )
    mirror = dirs["tmp"] / "mirror"
    monkeypatch.setenv("VLP_ZOO_DIR", str(mirror))
    with pytest.raises(FileNotFoundError, match=re.escape(f"Put the file at {mirror / 'tiny.safetensors'} ")):
        fetch(tiny(url), progress=False)
    assert server.requests == []


def test_offline_with_a_mirror_file_uses_it_without_a_request(
    server: Server, dirs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_mirror(dirs, monkeypatch, PAYLOAD)
    path = fetch(tiny(f"{server.url}/tiny.safetensors"), offline=True, progress=False)
    assert path == mirror / "tiny.safetensors" and read_lock(dirs["lock"]) == {"test:tiny": SHA}
    assert server.requests == []


def test_a_pinned_hash_refuses_a_changed_remote_file_naming_the_lock(
    server: Server, dirs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = dirs["tmp"] / "pins" / "zoo-lock.json"
    monkeypatch.setenv("VLP_ZOO_LOCK", str(lock))
    entry = tiny(f"{server.url}/tiny.safetensors")
    fetch(entry, progress=False)
    assert json.loads(lock.read_text()) == {"test:tiny": SHA}
    (dirs["cache"] / "tiny.safetensors").unlink()
    server.files["/tiny.safetensors"] = OTHER  # the publisher replaced the file
    with pytest.raises(
        FetchError, match=f"has sha256 {OTHER_SHA}, expected {SHA} \\(pinned in {re.escape(str(lock))}"
    ):
        fetch(entry, progress=False)
    assert cache_files(dirs) == [] and json.loads(lock.read_text()) == {"test:tiny": SHA}


def test_a_sha256_prefix_accepts_a_match_and_refuses_a_mismatch(server: Server, dirs: dict) -> None:
    with pytest.raises(FetchError, match=f"expected {OTHER_SHA[:8]}\\.\\.\\..*the prefix"):
        fetch(tiny(f"{server.url}/tiny.safetensors", sha256_prefix=OTHER_SHA[:8]), progress=False)
    assert cache_files(dirs) == []
    path = fetch(tiny(f"{server.url}/tiny.safetensors", sha256_prefix=SHA[:8]), progress=False)
    assert path.read_bytes() == PAYLOAD and read_lock(dirs["lock"]) == {"test:tiny": SHA}


def test_a_mirror_file_with_a_wrong_hash_is_refused_and_left_in_place(
    server: Server, dirs: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = use_mirror(dirs, monkeypatch, OTHER)
    with pytest.raises(FetchError, match=re.escape(f"{mirror / 'tiny.safetensors'} (in the mirror folder")):
        fetch(tiny(f"{server.url}/tiny.safetensors", sha256=SHA), progress=False)
    assert (mirror / "tiny.safetensors").read_bytes() == OTHER
    assert server.requests == []


def test_a_failed_download_names_the_url_and_the_path_to_put_the_file_at(server: Server, dirs: dict) -> None:
    url = f"{server.url}/missing.safetensors"
    with pytest.raises(FetchError, match=f"could not download {re.escape(url)} .*HTTP Error 404") as error:
        fetch(tiny(url), progress=False)
    assert f"Put the file at {dirs['cache'] / 'tiny.safetensors'}" in str(error.value)


def test_read_entry_state_names_a_missing_container_key_and_values_that_are_not_tensors(
    tmp_path: Path,
) -> None:
    torch.save({"model": dict(TENSORS), "epoch": 3}, tmp_path / "ckpt.pth")
    entry = tiny(filename="ckpt.pth", container_key="model")
    state = read_entry_state(entry, tmp_path / "ckpt.pth")
    assert all(torch.equal(state[k], TENSORS[k]) for k in TENSORS) and state.keys() == TENSORS.keys()
    missing = dataclasses.replace(entry, container_key="state_dict")
    with pytest.raises(
        ValueError, match=r"ckpt\.pth: no key 'state_dict' .*the file has \['epoch', 'model'\]"
    ):
        read_entry_state(missing, tmp_path / "ckpt.pth")
    torch.save({"model": {**TENSORS, "step": 7, "names": ["a"]}}, tmp_path / "mixed.pth")
    with pytest.raises(
        ValueError, match=r"mixed\.pth\['model'\]: .*\[\"'names' \(list\)\", \"'step' \(int\)\"\]"
    ):
        read_entry_state(entry, tmp_path / "mixed.pth")


# ------------------------------------------------------------------------------------------ the Hub


@pytest.fixture
def hub(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The local server as the Hub's endpoint, and an empty Hub cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server.files["/org/tiny/resolve/main/model.safetensors"] = PAYLOAD
    server.hub_sha = SHA
    return server


def test_a_hub_file_is_checked_against_the_hubs_lfs_sha256_and_then_read_offline(
    hub: Server, dirs: dict
) -> None:
    entry = tiny(hub=HubFile("org/tiny", "model.safetensors"))
    path = fetch(entry, progress=False)
    assert path.read_bytes() == PAYLOAD and read_lock(dirs["lock"]) == {"test:tiny": SHA}
    assert ("POST", "/api/models/org/tiny/paths-info/main", None) in hub.requests
    count = len(hub.requests)
    assert fetch(entry, offline=True, progress=False) == path  # the Hub's cache, no request
    assert len(hub.requests) == count


def test_a_hub_file_unlike_the_hubs_lfs_sha256_is_refused(hub: Server, dirs: dict) -> None:
    hub.hub_sha = OTHER_SHA
    with pytest.raises(FetchError, match=f"has sha256 {SHA}, expected {OTHER_SHA} \\(the Hub's LFS sha256"):
        fetch(tiny(hub=HubFile("org/tiny", "model.safetensors")), progress=False)
    assert read_lock(dirs["lock"]) == {}


def test_offline_a_hub_entry_missing_from_the_hubs_cache_names_the_path_and_the_source(
    hub: Server, dirs: dict
) -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"Put the file at .*tiny\.safetensors \(remote sources: hf:org/tiny/model\.safetensors@main\)",
    ):
        fetch(tiny(hub=HubFile("org/tiny", "model.safetensors")), offline=True, progress=False)
    assert hub.requests == []
