"""What the data holds, cheaply: a fingerprint of the files a run reads, so replaced images or labels
under the same ``data.root`` give a new cache key.

Label files (small text: .txt, .json, .jsonl, .csv, ...) are hashed whole; other files (images,
videos) by their size and their first, middle and last 64 KiB. Hashes are remembered in a JSON file
keyed by (path, size, mtime_ns), so a second run over 10 000 frames only lists and stats them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from vlmexp.atomic import write_text_atomic
from vlmexp.provenance import sample_record

log = logging.getLogger(__name__)

LABEL_SUFFIXES = {".txt", ".json", ".jsonl", ".csv", ".tsv", ".yaml", ".yml"}
SAMPLE_BYTES = 64 * 1024
#: The ``data.*`` keys that name files or folders of the dataset.
DATA_PATH_KEYS = ("root", "train_root", "val_root", "train_file", "val_file", "test_file", "image_dir",
                  "labels_file")


def file_hash(path: Path, size: int) -> str:
    """sha256 of a label file's bytes, or of an image's size and three 64 KiB samples."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        if path.suffix.lower() in LABEL_SUFFIXES or size <= 3 * SAMPLE_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            for offset in (0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES):
                fh.seek(offset)
                digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


class HashCache:
    """File hashes remembered across runs in ``cache_file``, valid while size and mtime_ns hold."""

    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        self.hits = 0
        self.misses = 0
        try:
            self._entries: dict[str, list] = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def hash(self, path: Path) -> tuple[int, str]:
        """The file's size and content hash."""
        st = path.stat()
        key = str(path)
        known = self._entries.get(key)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            self.hits += 1
            return st.st_size, known[2]
        self.misses += 1
        digest = file_hash(path, st.st_size)
        self._entries[key] = [st.st_size, st.st_mtime_ns, digest]
        return st.st_size, digest

    def save(self) -> None:
        if self.misses:
            write_text_atomic(self.cache_file, json.dumps(self._entries, separators=(",", ":")))


def _walk(folder: Path) -> Iterable[Path]:
    """Every file under ``folder``, hidden names left out, in a stable order. Linked folders are
    followed (a dataset made of links to its sequences is still fingerprinted by content), each
    folder once, so a link back to an ancestor cannot loop; links that point nowhere are left out
    (the loaders name them)."""
    seen: set[tuple[int, int]] = set()

    def first_visit(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:  # a link that loops or points nowhere
            return False
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return False
        seen.add(key)
        return True

    first_visit(str(folder))
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and first_visit(os.path.join(root, d))]
        for name in sorted(files):
            path = Path(root, name)
            if not name.startswith(".") and path.is_file():
                yield path


def _under(path: Path, folders: list[Path]) -> bool:
    return any(path == f or f in path.parents for f in folders)


def data_fingerprint(data_cfg, samples: Iterable, cache: HashCache) -> str:
    """Hash of the files of the dataset: everything under the ``data.*`` paths, and the files of
    samples outside them (a generated dataset) with their label files and records. Independent of
    ``data.limit`` for data under the configured paths."""
    digest = hashlib.sha256()
    sources = []
    for key in DATA_PATH_KEYS:
        value = data_cfg.get(key)
        if value:
            source = Path(os.path.expanduser(str(value))).resolve()
            sources.append(source)
            files = [source] if source.is_file() else _walk(source)
            for path in files:
                size, content = cache.hash(path)
                name = path.name if path == source else path.relative_to(source).as_posix()
                digest.update(json.dumps([key, name, size, content]).encode())
    loose = []
    for sample in samples:
        path = getattr(sample, "path", None)
        if path is not None and not _under(Path(path).resolve(), sources):
            loose.append(sample)
    for sample in loose:
        path = Path(sample.path).resolve()
        record = sample_record(sample)  # the id and labels
        for file in [path, *(path.with_suffix(s) for s in sorted(LABEL_SUFFIXES))]:
            if file.is_file():
                record[file.suffix] = cache.hash(file)
        digest.update(json.dumps(["sample", record], sort_keys=True, default=str).encode())
    cache.save()
    return digest.hexdigest()[:16]
