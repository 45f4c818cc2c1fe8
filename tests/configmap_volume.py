"""A ConfigMap volume as the kubelet writes it, for tests of a reader that must follow it."""

from __future__ import annotations

from pathlib import Path


def kubelet_write(volume: Path, key: str, text: str, generation: int) -> None:
    """What the kubelet does on a refresh: the data in a new timestamped folder, then a
    `..data` symlink renamed over the old one (one atomic rename); `key` is a symlink through
    `..data`, so its path never changes and never dangles."""
    data = volume / f"..2026_01_01_00_00_00.{generation:04d}"
    data.mkdir(parents=True)
    (data / key).write_text(text)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(data.name)
    tmp.rename(volume / "..data")  # rename(2): atomic, replaces the old link
    link = volume / key
    if not link.is_symlink():
        link.symlink_to(f"..data/{key}")
