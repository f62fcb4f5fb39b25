"""registry-push's model cache (services/registry_push/cache.py, config.py): the eviction
decision (pure, property-tested), private modes, and its settings."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.registry_push.cache import CacheEntry, ModelCache, private_dir, to_evict
from edgepub.services.registry_push.config import DEFAULT_CACHE_MAX_BYTES, PushSettings
from edgepub.shared.errors import ConfigError
from edgepub.shared.settings import Env

_entries = st.lists(
    st.builds(
        CacheEntry,
        name=st.text("0123456789abcdef", min_size=4, max_size=4),
        size=st.integers(0, 1000),
        used_at=st.floats(0, 1e6),
    ),
    unique_by=lambda e: e.name,
    max_size=20,
)


@given(_entries, st.integers(0, 5000), st.data())
def test_eviction_keeps_within_the_bound_never_touching_what_is_in_use(
    entries: list[CacheEntry], max_bytes: int, data: st.DataObject
) -> None:
    names = [e.name for e in entries]
    in_use = set(data.draw(st.lists(st.sampled_from(names), unique=True))) if names else set()
    evicted = to_evict(entries, max_bytes, in_use)
    assert not set(evicted) & in_use
    kept = [e for e in entries if e.name not in evicted]
    in_use_bytes = sum(e.size for e in entries if e.name in in_use)
    assert sum(e.size for e in kept) <= max(max_bytes, in_use_bytes)
    # least recently used first: everything evicted is older than everything kept
    # (in-use files aside), and nothing is evicted once the rest fits
    free_kept = [e for e in kept if e.name not in in_use]
    by_name = {e.name: e for e in entries}
    for name in evicted:
        assert all((by_name[name].used_at, name) <= (k.used_at, k.name) for k in free_kept)
    if evicted:
        last = by_name[evicted[-1]]
        assert sum(e.size for e in kept) + last.size > max_bytes


def test_a_cache_that_fits_evicts_nothing() -> None:
    entries = [CacheEntry("a", 10, 1.0), CacheEntry("b", 10, 2.0)]
    assert to_evict(entries, 20, set()) == []
    assert to_evict(entries, 19, set()) == ["a"]
    assert to_evict(entries, 19, {"a"}) == ["b"]
    assert to_evict(entries, 0, {"a", "b"}) == []


def test_directories_are_made_or_tightened_to_0700(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    assert stat.S_IMODE(private_dir(loose).stat().st_mode) == 0o700
    fresh = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_the_cache_trims_by_last_use_and_tightens_old_files(tmp_path: Path) -> None:
    cache = ModelCache(None, tmp_path / "models", max_bytes=25)  # type: ignore[arg-type]
    for n, name in enumerate(["old", "mid", "new"]):
        path = cache.root / name
        path.write_bytes(b"x" * 10)
        os.chmod(path, 0o644)  # as an earlier version left it
        os.utime(path, (1000 + n, 1000 + n))
    (cache.root / ".new.123.part").write_bytes(b"y" * 100)  # being written: not counted
    cache.sweep()
    assert all(stat.S_IMODE((cache.root / name).stat().st_mode) == 0o600 for name in ("mid", "new"))
    assert cache.trim() == ["old"]
    assert sorted(p.name for p in cache.root.iterdir()) == [".new.123.part", "mid", "new"]


def test_settings_default_under_the_edgepub_home_and_parse_the_bound(tmp_path: Path) -> None:
    base = {"EDGEPUB_REGISTRY": "127.0.0.1:5000"}
    home = PushSettings.from_env(Env({**base, "EDGEPUB_HOME": str(tmp_path)}))
    assert home.cache_dir == str(tmp_path / "cache")
    assert home.cache_max_bytes == DEFAULT_CACHE_MAX_BYTES == 1 << 30
    default = PushSettings.from_env(Env(base)).cache_dir
    assert default == str(Path.home() / ".edgepub" / "cache")  # never a shared /tmp
    for raw, want in (("0", 0), ("1Gi", 1 << 30), ("500M", 500_000_000), ("123", 123)):
        got = PushSettings.from_env(Env({**base, "EDGEPUB_CACHE_MAX_BYTES": raw}))
        assert got.cache_max_bytes == want
    for bad in ("lots", "-1", "1 Gi", "512m"):
        with pytest.raises(ConfigError, match="EDGEPUB_CACHE_MAX_BYTES"):
            PushSettings.from_env(Env({**base, "EDGEPUB_CACHE_MAX_BYTES": bad}))
