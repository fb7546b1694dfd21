"""Files sealed with a key kept outside the storage: what tunetrain must read back but cannot read without running
code (Ray's saved search holds pickles) is restored only from a copy this user's tunetrain sealed.

Whoever can write the storage (a shared disk, a bucket) can replace a pickle, and unpickling it runs their code on
the driver. So the driver seals what it will need to restore, HMAC-SHA256 over every file's name and content, with
a key that never goes to the storage: `~/.config/tunetrain/state.key` (`$TUNETRAIN_KEY_FILE` names another file),
made on first use, readable by its owner only. A sealed copy is one file, written whole: the files and the MAC over
all of them together, so that a copy is restored as a set or not at all.

What this does not stop: someone who can read the key file, or who puts back an older sealed copy of the same
experiment (or another one this user ran), which only ever holds state this user's tunetrain wrote.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from tunetrain.errors import ConfigError

KEY_FILE_ENV = "TUNETRAIN_KEY_FILE"
_FORMAT = "tunetrain-sealed-v1"
_MAGIC = _FORMAT.encode() + b"\n"
_KEY_BYTES = 32


class SealBroken(ValueError):
    """A sealed copy that is not whole, not in this format, or not sealed with this key."""


def key_file() -> Path:
    """Where this user's key is (or will be made)."""
    named = os.environ.get(KEY_FILE_ENV)
    if named:
        return Path(named).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "tunetrain" / "state.key"


def load_key(*, create: bool) -> bytes | None:
    """This user's key; made (owner-only) when there is none and `create`, else None."""
    path = key_file()
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        return _make_key(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read tunetrain's key {path}: {exc.__class__.__name__}: {exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < _KEY_BYTES:
        raise ConfigError(
            f"tunetrain's key {path} is not {_KEY_BYTES} or more bytes in hex: remove it to have a new one made "
            "(what the old one sealed can then not be restored)"
        )
    return key


def _make_key(path: Path) -> bytes:
    key = secrets.token_bytes(_KEY_BYTES)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago: use theirs
        return load_key(create=False) or key
    except OSError as exc:
        raise ConfigError(
            f"cannot make tunetrain's key {path} ({exc.strerror}): set ${KEY_FILE_ENV} to a writable path"
        ) from None
    with os.fdopen(fd, "w") as file:
        file.write(key.hex() + "\n")
    return key


def _mac(key: bytes, files: Mapping[str, bytes]) -> str:
    mac = hmac.new(key, _FORMAT.encode(), hashlib.sha256)
    for name in sorted(files):
        encoded = name.encode()
        mac.update(len(encoded).to_bytes(8, "big") + encoded + hashlib.sha256(files[name]).digest())
    return mac.hexdigest()


def seal(files: Mapping[str, bytes], key: bytes) -> bytes:
    """One document holding `files` (name -> content) and the MAC of them all: a line of magic, a line of JSON (the
    names and lengths, and the MAC), then the contents one after another (no encoding: Ray's state is megabytes)."""
    names = sorted(files)
    header = {"files": [[name, len(files[name])] for name in names], "mac": _mac(key, files)}
    return b"".join([_MAGIC, json.dumps(header).encode(), b"\n", *(files[name] for name in names)])


def unseal(document: bytes, key: bytes) -> dict[str, bytes]:
    """The files `seal` put in `document`, if it is whole and sealed with `key`; SealBroken otherwise."""
    if not document.startswith(_MAGIC):
        raise SealBroken(f"not a {_FORMAT} document")
    line_end = document.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(document[len(_MAGIC) : line_end])
        given = str(header["mac"])
        files, offset = {}, line_end + 1
        for name, length in header["files"]:
            if not isinstance(length, int) or length < 0 or offset + length > len(document):
                raise ValueError("a file runs past the end")
            files[str(name)] = document[offset : offset + length]
            offset += length
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise SealBroken(f"not whole ({exc.__class__.__name__})") from None
    if line_end < 0 or offset != len(document):
        raise SealBroken("not whole (its length is not what its header says)")
    if not hmac.compare_digest(given, _mac(key, files)):
        raise SealBroken("not sealed with this key")
    return files
