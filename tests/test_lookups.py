"""Path resolution from listings (issue 12): what a lookup costs and what it may believe.

A registry tree is written straight into the bucket (as another replica or the native
driver would leave it), a fresh mount looks at it through the counting proxy, and the
requests are counted: a deep path on a cold mount costs one listing, not one per
component; a directory's listing answers the stats of its entries (registry 3.1 stats
every tag directory of a tag listing); a digest-named link whose ETag proves its bytes is
read without a GET. Then the other side: whatever the mount answers from listings, another
writer's new tag, deleted manifest or removed repository shows within `metadata_ttl`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from s3fs_registry.namespace import Node
from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server, expect_errno
from tests.s3proxy import S3Proxy

V2 = "docker/registry/v2"
TTL = 1.0  # the default metadata_ttl


def _hex(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def repo_keys(repo: str, tags: list[str]) -> dict[str, bytes]:
    """A repository as the registry lays it out: per tag a manifest blob, its revision
    link, the tag's `current` and `index` links; one layer linked from `_layers`."""
    root = f"{V2}/repositories/{repo}"
    layer = _hex(repo + " layer")
    keys = {
        f"{V2}/blobs/sha256/{layer[:2]}/{layer}/data": b"layer",
        f"{root}/_layers/sha256/{layer}/link": f"sha256:{layer}".encode(),
    }
    for tag in tags:
        digest = _hex(f"{repo}:{tag}")
        link = f"sha256:{digest}".encode()
        keys[f"{V2}/blobs/sha256/{digest[:2]}/{digest}/data"] = b"{}"
        keys[f"{root}/_manifests/revisions/sha256/{digest}/link"] = link
        keys[f"{root}/_manifests/tags/{tag}/current/link"] = link
        keys[f"{root}/_manifests/tags/{tag}/index/sha256/{digest}/link"] = link
    return keys


def put_all(mount: Mount, keys: dict[str, bytes]) -> None:
    client = mount.server.client()
    with ThreadPoolExecutor(10) as pool:
        for done in [
            pool.submit(client.put_object, Bucket=mount.bucket, Key=mount.prefix + k, Body=v)
            for k, v in keys.items()
        ]:
            done.result()


def delete_all(mount: Mount, keys: list[str]) -> None:
    objects = [{"Key": mount.prefix + k} for k in keys]
    mount.server.client().delete_objects(Bucket=mount.bucket, Delete={"Objects": objects})


@pytest.fixture
def pm(s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory) -> Mount:
    return mount_factory(s3, endpoint=proxy.url)


def lists(proxy: S3Proxy) -> int:
    return proxy.count(method="GET", query_contains="list-type=2")


def requests(proxy: S3Proxy) -> int:
    """What the file operations cost (the janitor's ListMultipartUploads apart)."""
    return sum(1 for r in proxy.requests if "uploads" not in r.query)


def test_a_deep_path_on_a_cold_mount_costs_two_listings(pm: Mount, proxy: S3Proxy) -> None:
    """The registry's top directories are shown by one key (their first page is blobs);
    one listing of `repositories` then answers every component below it."""
    keys = {**repo_keys("ns/a", ["v1"]), **repo_keys("ns/b", ["v1", "v2"])}
    forged = f"{V2}/repositories/ns/a/_layers/sha256/{_hex('forged')}/link"
    keys[forged] = b"sha256:" + b"0" * 64  # bytes other than the digest its path names
    put_all(pm, keys)
    tags = pm.path / V2 / "repositories/ns/b/_manifests/tags"
    proxy.reset_counts()
    assert (tags / "v2/current/link").stat().st_size == 71
    assert requests(proxy) == 2, "one listing answers every component below the skeleton"
    # the registry's tags/list, then 3.1's stat of each tag directory, then the links
    assert sorted(os.listdir(tags)) == ["v1", "v2"]
    assert all((tags / t).is_dir() for t in ("v1", "v2"))
    digest = _hex("ns/b:v2")
    index = tags / f"v2/index/sha256/{digest}/link"
    assert index.read_bytes() == f"sha256:{digest}".encode()
    assert (tags / "v2/current/link").read_bytes() == f"sha256:{digest}".encode()
    assert requests(proxy) == 2, "listings cover the names looked up next; ETags the links"
    # a link whose ETag is not the MD5 of its path's digest is read from S3
    assert (pm.path / forged).read_bytes() == b"sha256:" + b"0" * 64
    assert not (pm.path / V2 / "repositories/ns/c").exists()
    assert not (tags / "v3").exists()
    assert lists(proxy) == 2, "absent names answered from the same listing"


def test_a_tag_listing_of_520_tags_costs_its_listing_not_a_request_per_tag(
    pm: Mount, proxy: S3Proxy
) -> None:
    """More keys than one listing page (2,100): a lookup's page stops early, so its
    listings are partial (they answer only the names before the key it stopped at) and the
    next lookup past it lists from there; listing the tags costs that directory's pages,
    and the stat of each tag nothing more."""
    names = [f"t{i:03d}" for i in range(520)]
    put_all(pm, repo_keys("ns/big", names))
    tags = pm.path / V2 / "repositories/ns/big/_manifests/tags"
    proxy.reset_counts()
    assert tags.is_dir()
    assert lists(proxy) == 2, "the skeleton's first key, then a page from repositories/"
    found = sorted(os.listdir(tags))
    assert found == names, "exact, past the page the lookup stopped at"
    for name in found:
        assert (tags / name).is_dir()
    assert lists(proxy) <= 4, "the lookups and 2 pages of tags/, whatever the tag count"
    assert requests(proxy) == lists(proxy)
    last = tags / names[-1] / "index/sha256" / _hex(f"ns/big:{names[-1]}") / "link"
    assert last.stat().st_size == 71
    assert not (tags / "t999").exists()
    assert requests(proxy) <= 4


def test_another_writers_new_tag_and_deleted_manifest_show_within_the_ttl(pm: Mount) -> None:
    keys = repo_keys("ns/r", ["v1"])
    put_all(pm, {**keys, **repo_keys("ns/s", ["latest"])})
    manifests = pm.path / V2 / "repositories/ns/r/_manifests"
    revision = manifests / "revisions/sha256" / _hex("ns/r:v1") / "link"
    latest = pm.path / V2 / "repositories/ns/s/_manifests/tags/latest/current/link"
    assert os.listdir(manifests / "tags") == ["v1"]
    assert revision.read_bytes() == f"sha256:{_hex('ns/r:v1')}".encode()
    assert latest.read_bytes() == f"sha256:{_hex('ns/s:latest')}".encode()
    put_all(pm, repo_keys("ns/r", ["v2"]))  # another replica pushes a tag ...
    delete_all(pm, [k for k in keys if "/_manifests/" in k])  # ... deletes v1's manifest ...
    moved = f"sha256:{_hex('ns/r:v1')}".encode()  # ... and moves a tag (same size)
    put_all(pm, {str(latest.relative_to(pm.path)): moved})
    changed = time.monotonic()
    time.sleep(TTL + 0.1)
    assert latest.read_bytes() == moved
    assert sorted(os.listdir(manifests / "tags")) == ["v2"]
    expect_errno(errno.ENOENT, os.stat, revision)
    expect_errno(errno.ENOENT, revision.read_bytes)
    assert os.listdir(manifests / "revisions/sha256") == [_hex("ns/r:v2")]
    assert time.monotonic() - changed < TTL + 1.0, "the checks themselves took long"


def test_a_path_whose_ancestor_was_removed_elsewhere_is_enoent(pm: Mount) -> None:
    """Deep beliefs do not outlive their ancestors: after another writer removes a
    repository, every path through it is ENOENT once `metadata_ttl` has passed, whether
    the kernel still holds its directories or looks them up again."""
    keys = {**repo_keys("ns/gone", ["v1"]), **repo_keys("ns/kept", ["v1"])}
    put_all(pm, keys)
    gone = pm.path / V2 / "repositories/ns/gone"
    link = gone / "_manifests/tags/v1/current/link"
    assert link.read_bytes().startswith(b"sha256:")
    held = os.open(gone / "_manifests/tags", os.O_RDONLY)  # the kernel keeps this inode
    try:
        delete_all(pm, [k for k in keys if "/ns/gone/" in k])
        time.sleep(TTL + 0.1)
        expect_errno(errno.ENOENT, os.stat, link)
        expect_errno(errno.ENOENT, os.stat, gone)
        expect_errno(errno.ENOENT, os.stat, f"/proc/self/fd/{held}/v1/current/link")
        assert os.listdir(gone.parent) == ["kept"]
    finally:
        os.close(held)
    kept = gone.parent / "kept/_manifests/tags/v1/current/link"
    assert kept.read_bytes().startswith(b"sha256:")


def test_concurrent_lookups_of_one_name_share_one_listing(pm: Mount, proxy: S3Proxy) -> None:
    """The registry resolves one path from several goroutines at once; the kernel sends a
    lookup for each while the name's attributes are stale. They wait for one listing."""
    put_all(pm, repo_keys("ns/a", ["v1"]))
    link = pm.path / V2 / "repositories/ns/a/_manifests/tags/v1/current/link"
    assert link.stat().st_size == 71
    time.sleep(TTL + 0.1)  # every belief below the skeleton is stale now
    proxy.reset_counts()
    proxy.delay = 0.2  # each listing takes a while: the lookups overlap
    with ThreadPoolExecutor(4) as pool:
        sizes = list(pool.map(lambda _: link.stat().st_size, range(4)))
    assert sizes == [71] * 4
    assert lists(proxy) == 1


def test_an_upload_kept_open_is_found_past_the_listings(
    pm: Mount, proxy: S3Proxy, s3: S3Server, mount_factory: MountFactory
) -> None:
    """An upload's `data` in flight is a multipart upload, which no listing shows: the
    upload's other files come from the deep listing, `data` is always asked of S3."""
    upload = pm.path / V2 / "repositories/ns/a/_uploads/u"
    other = mount_factory(s3, bucket=pm.bucket)  # another replica writes the upload
    (other.path / upload.relative_to(pm.path)).mkdir(parents=True)
    (other.path / upload.relative_to(pm.path) / "startedat").write_bytes(b"2026-12-06T00:00:00Z")
    (other.path / upload.relative_to(pm.path) / "data").write_bytes(b"x" * (5 << 20))
    proxy.reset_counts()
    assert (upload / "startedat").stat().st_size == 20
    assert lists(proxy) == 1
    assert (upload / "data").stat().st_size == 5 << 20
    assert proxy.count(method="GET", query_contains="uploads") >= 1, "asked for the upload"
    assert sorted(os.listdir(upload)) == ["data", "startedat"]


def test_the_catalog_walk_stats_every_entry_from_its_listing(pm: Mount, proxy: S3Proxy) -> None:
    """The registry's catalog and garbage collection walk with Go's WalkFallback: list a
    directory, stat every entry in order, descend. No entry costs a request of its own."""
    keys: dict[str, bytes] = {}
    for i in range(40):
        keys.update(repo_keys(f"ns/r{i:02d}", ["v1"]))
    put_all(pm, keys)
    proxy.reset_counts()
    found = []

    def walk(path: Path) -> None:
        for name in sorted(os.listdir(path)):
            child = path / name
            if child.is_dir():  # the stat WalkFallback makes of every entry
                if name == "_layers":
                    found.append(str(path.relative_to(pm.path / V2 / "repositories")))
                elif not name.startswith("_"):
                    walk(child)

    walk(pm.path / V2 / "repositories")
    assert found == [f"ns/r{i:02d}" for i in range(40)]
    assert requests(proxy) <= 2, "the lookups and one listing of the tree"


async def test_small_pages_cut_anywhere_still_give_exact_answers(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup and walk logic itself (vfs.names against the server, no kernel), with
    pages of 7 keys and subtree scans of two pages: every listing is cut somewhere, partial
    listings, spans over siblings and their fallbacks are all taken. A walk that lists
    every directory and looks up every entry, and lookups of absent names, must give
    exactly what S3 holds."""
    from s3fs_registry.config import parse_config
    from s3fs_registry.namespace import Namespace
    from s3fs_registry.store import Store
    from s3fs_registry.vfs import names
    from tests.mounts import s3_config

    monkeypatch.setattr(names, "PROBE_KEYS", 7)
    monkeypatch.setattr(names, "PAGE_KEYS", 7)
    monkeypatch.setattr(names, "SUBTREE_PAGES", 2)
    monkeypatch.setattr(names, "SPAN_ENTRIES", 2)
    bucket = s3.new_bucket()
    config = parse_config({"storage": {"s3": s3_config(s3, bucket)}}, {})
    store = Store(config.s3, config.mount)
    keys = {**repo_keys("ns/a", ["v1", "v2"]), **repo_keys("ns/a-x", ["v1"])}
    for i in range(6):
        keys.update(repo_keys(f"ns/r{i}", [f"t{j}" for j in range(i)]))
    for key, body in keys.items():
        await store.put("reg/" + key, body)
    tree: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split("/")
        for depth in range(len(parts)):
            tree.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    ns = Namespace("reg/", metadata_ttl=60.0, immutable_ttl=300.0, negative_ttl=60.0)
    walker = names.Names(ns, store)

    async def walk(node: Node, rel: str) -> None:
        entries = await walker.list_dir(node.ino)
        assert {name for name, _ in entries} == tree[rel], rel
        for name, entry in entries:
            child = walker.entry_node(node.ino, name, entry)
            path = f"{rel}/{name}" if rel else name
            assert child.is_dir == (path in tree), path
            if child.is_dir:
                await walk(child, path)

    v2 = ns.root
    for name in V2.split("/"):  # cold lookups down the skeleton, then deep ones
        found = await walker.resolve(v2, name)
        assert found is not None
        v2 = found
    repo = v2
    for name in ["repositories", "ns", "r5", "_manifests", "tags", "t4", "current"]:
        found = await walker.resolve(repo, name)
        assert found is not None and found.is_dir, name
        repo = found
    assert await walker.resolve(repo, "nothing") is None
    assert (await walker.resolve(repo, "link")) is not None
    await walk(v2, V2)
    assert await walker.resolve(v2, "nothing") is None

    # lookups alone, as the registry's walks make them, on a cold namespace whose
    # listings are stale at once (every lookup asks S3; spans over siblings are taken):
    # every name of every directory in order, then one absent name per directory
    ns = Namespace("reg/", metadata_ttl=0.0, immutable_ttl=0.0, negative_ttl=60.0)
    walker = names.Names(ns, store)
    for rel in sorted(r for r in tree if r.count("/") <= 5):  # down to each repository
        node = ns.root
        for name in rel.split("/") if rel else []:
            found = await walker.resolve(node, name)
            assert found is not None and found.is_dir, rel
            node = found
        for name in sorted(tree[rel]):
            found = await walker.resolve(node, name)
            path = f"{rel}/{name}" if rel else name
            assert found is not None and found.is_dir == (path in tree), path
        assert await walker.resolve(node, "zz-absent") is None, rel


def test_blobs_seen_in_a_listing_stay_known_and_new_ones_show(pm: Mount, proxy: S3Proxy) -> None:
    """Blobs are trusted for immutable_ttl once seen, also through the listing that showed
    them: stat'ing one a listing showed costs nothing after metadata_ttl. A blob pushed
    elsewhere after that listing is found all the same: absence is asked again."""
    put_all(pm, repo_keys("ns/a", ["v1", "v2"]))
    blobs = pm.path / V2 / "blobs/sha256"
    second = _hex("ns/a:v2")
    assert len(os.listdir(blobs)) == 3  # the subtree of blobs/sha256 is listed
    time.sleep(TTL + 0.1)
    proxy.reset_counts()
    assert (blobs / second[:2] / second / "data").stat().st_size == 2
    assert requests(proxy) == 0, "shown by the listing of blobs/sha256"
    put_all(pm, repo_keys("ns/b", ["v1"]))  # another replica pushes
    new = _hex("ns/b:v1")
    time.sleep(TTL + 0.1)
    assert (blobs / new[:2] / new / "data").stat().st_size == 2
