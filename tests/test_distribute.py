"""Distribution of an approved set to several sites (cpframe.campaign.distribute).

The source is a real SQLite repository holding a reviewed, approved and deployed set; the
sites are real repositories: a local path (SQLite), a PostgreSQL-backed one, and one reached
only through a real OpenSSH server on 127.0.0.1 (SFTP transfer, import run over SSH).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cpframe.campaign import lifecycle as L
from cpframe.campaign.distribute import archive_set, read_manifest
from cpframe.cli import main
from cpframe.core.errors import UnknownCollectionError
from cpframe.core.model import CollectionType
from tests.fixtures.ssh import sshd_server  # noqa: F401 - fixture
from tests.test_lifecycle import P, RAW, _exposure, build_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def source(tmp_path, repo_factory):
    repo = build_set(repo_factory("sqlite", "source"), tmp_path, failing=())
    L.submit(repo, P, who="alice")
    L.approve(repo, P, ticket="DM-2", who="bob")
    from cpframe.campaign.deploy import deploy

    res = deploy(repo.registry, "LSSTComCam", P, raw_collection=RAW)
    L.record_deployment(repo, P, res, who="carol", ticket="DM-3")
    return repo


def _site(repo):
    """A data facility: the camera, its exposures and raws' collection, no calibrations yet."""
    repo.register_instrument("LSSTComCam", scale="mini")
    repo.registry.insert_exposures([_exposure(20241110, 7, "2024-11-10T20:00:00")])
    repo.registry.register_collection(RAW, CollectionType.RUN)
    return repo


def _sites_file(tmp_path, sites, archive=None):
    f = tmp_path / "sites.yaml"
    f.write_text(yaml.safe_dump({"archive": str(archive or tmp_path / "archive"), "sites": sites}))
    return f


def _cli(args):
    return CliRunner().invoke(main, args, env={"CPFRAME_USER": "dist"})


def _ssh_site(server, repo_root):
    command = f"env PYTHONPATH={ROOT} {sys.executable} -m cpframe"
    return {"name": "remote", "repo": server.url(repo_root), "key_filename": str(server.key), "command": command}


def test_archive_is_content_addressed_and_idempotent(source, tmp_path):
    import hashlib

    m1 = archive_set(source, P, tmp_path / "a")
    m2 = archive_set(source, P, tmp_path / "a")
    assert m1.id == m2.id and len(m1.files) == 2
    for rel, sha in m1.files.items():
        obj = tmp_path / "a" / m1.object_path(sha)
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == sha
    assert read_manifest(tmp_path / "a", P).id == m1.id
    (tmp_path / "a" / "manifests" / f"{m1.id}.json").write_text("{}")
    with pytest.raises(Exception, match="does not match its id"):
        read_manifest(tmp_path / "a", P)


def test_distribute_to_local_and_postgres_sites_then_rebuild_at_a_new_facility(source, repo_factory, tmp_path):
    a = _site(repo_factory("sqlite", "site_a"))
    pg = _site(repo_factory("postgres", "site_pg"))
    f = _sites_file(tmp_path, [{"name": "a", "repo": str(a.root)}, {"name": "pg", "repo": f"file://{pg.root}"}])
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0, res.output
    assert "is distributed to every site" in res.output
    for site in (a, pg):
        assert site.registry.get_chain("LSSTComCam/calib") == (P,)
        assert {r.data_id["detector"] for r in site.registry.query_certifications(f"{P}/test/bias.20250101a")} == {0, 1}
    st = L.set_status(source, P)
    assert st.state == "distributed" and st.sites == {"archive": "exported", "a": "checked", "pg": "checked"}
    # again: nothing to do
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0 and res.output.count("already done (skipped)") == 2
    # a new facility without raws: rebuild INSTRUMENT/calib from the archive alone
    new = repo_factory("sqlite", "new_facility")
    res = _cli(["rebuild-calib-chain", str(new.root), "--from-archive", str(tmp_path / "archive")])
    assert res.exit_code == 0, res.output
    assert "imported" in res.output and "self-check skipped: no raw collection" in res.output
    assert new.registry.get_chain("LSSTComCam/calib") == (P,)
    n = len(L.ledger(new).rows())
    res = _cli(["rebuild-calib-chain", str(new.root), "--from-archive", str(tmp_path / "archive")])
    assert res.exit_code == 0 and "already imported" in res.output and len(L.ledger(new).rows()) == n


def test_unapproved_set_and_unreachable_site_change_nothing(tmp_path, repo_factory, sshd_server):
    src = build_set(repo_factory("sqlite", "src"), tmp_path)
    a = _site(repo_factory("sqlite", "a"))
    f = _sites_file(tmp_path, [{"name": "a", "repo": str(a.root)}])
    res = _cli(["distribute", str(src.root), P, "--sites", str(f)])
    assert res.exit_code == 2 and "cannot distribute" in res.output and "distribute approved, deployed sets" in res.output
    L.record_deployment(src, P, None, override="test")
    res = _cli(["distribute", str(src.root), P, "--sites", str(f)])
    assert res.exit_code == 2 and "deployed by override" in res.output


def test_unreachable_ssh_site_is_one_line_and_nothing_moves(source, repo_factory, tmp_path, sshd_server):
    import socket

    a = _site(repo_factory("sqlite", "a"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bad = {"name": "far", "repo": f"sftp://{sshd_server.user}@127.0.0.1:{port}/nowhere", "key_filename": str(sshd_server.key)}
    f = _sites_file(tmp_path, [{"name": "a", "repo": str(a.root)}, bad])
    n = len(L.ledger(source).rows())
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"site far: cannot connect to sftp://{sshd_server.user}@127.0.0.1:{port}/nowhere" in res.output
    assert len(L.ledger(source).rows()) == n and not (tmp_path / "archive").exists()
    with pytest.raises(Exception):
        a.registry.get_chain("LSSTComCam/calib")


@pytest.mark.slow
def test_ssh_site_fails_mid_transfer_then_resumes(source, repo_factory, tmp_path, sshd_server):
    a = _site(repo_factory("sqlite", "a"))
    remote = _site(repo_factory("sqlite", "remote"))
    f = _sites_file(tmp_path, [{"name": "a", "repo": str(a.root)}, _ssh_site(sshd_server, remote.root)])
    m = archive_set(source, P, tmp_path / "archive")
    objects = sorted(set(m.files.values()))
    # the site's disk refuses the second object: a directory sits where it must go
    blocker = remote.root / ".cpframe-inbox" / m.object_path(objects[1])
    blocker.mkdir(parents=True)
    (blocker / "x").write_text("in the way")
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8, res.output
    assert "site remote: transfer to sftp://" in res.output and "failed after 1 object(s)" in res.output
    assert "run the same command again: it resumes" in res.output
    st = L.set_status(source, P)
    assert st.state == "deployed" and st.sites == {"archive": "exported", "a": "checked", "remote": "failed"}
    with pytest.raises(Exception):
        remote.registry.get_chain("LSSTComCam/calib")
    # the site is repaired; the same command resumes: site a is skipped, the first object is not sent again
    import shutil

    shutil.rmtree(blocker)
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0, res.output
    assert "a: already done (skipped)" in res.output
    rows = [r for r in L.ledger(source).rows(P) if r.site == "remote"]
    transferred = [r for r in rows if r.state == "transferred"][-1]
    assert (transferred.detail["sent"], transferred.detail["already_there"]) == (len(objects) - 1, 1)
    assert [r.state for r in rows][-3:] == ["transferred", "imported", "checked"]
    assert "self-check PASS" in rows[-1].why
    assert remote.registry.get_chain("LSSTComCam/calib") == (P,)
    assert L.set_status(source, P).state == "distributed"
    # the site's own ledger says where the set came from
    (site_row,) = L.ledger(remote).rows(P)
    assert site_row.state == "deployed" and site_row.detail["manifest"] == m.id


@pytest.fixture
def bucket(tmp_path):
    """A real fsspec filesystem that is not a disk (fsspec's in-memory one, shared by this process
    as a bucket would be by its users): the site's "bucket" folder exists, nothing else."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/cpframe-{tmp_path.name}"
    fs.makedirs(f"{root}/calib", exist_ok=True)
    yield fs, f"memory://{root}/calib"
    fs.rm(root, recursive=True)


def test_fsspec_site_fails_mid_transfer_resumes_and_is_recorded_from_its_receipt(source, repo_factory, tmp_path,
                                                                                   bucket):
    """Issue 15: a site given only as an fsspec URL (no cpframe runs there) goes end to end:
    transfer (cut, then resumed), the site's own import from its inbox URL, and the source
    recording the site's receipt until the set is distributed."""
    fs, url = bucket
    site = _site(repo_factory("sqlite", "bucket_site"))
    f = _sites_file(tmp_path, [{"name": "bucket", "repo": url}])
    m = archive_set(source, P, tmp_path / "archive")
    objects = sorted(set(m.files.values()))
    inbox = url.removeprefix("memory://") + "/.cpframe-inbox"
    blocker = f"{inbox}/{m.object_path(objects[1])}"  # something else sits where the second object must go
    fs.pipe_file(f"{blocker}/x", b"in the way")
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8, res.output
    assert f"site bucket: transfer to {url} failed after 1 object(s)" in res.output, res.output
    st = L.set_status(source, P)
    assert st.state == "deployed" and st.sites == {"archive": "exported", "bucket": "failed"}
    fs.rm(blocker, recursive=True)
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0, res.output
    assert "WAITING" in res.output and f"--from-archive {url}/.cpframe-inbox" in res.output
    assert "1 site(s) (bucket) received the archive and wait for their import" in res.output
    rows = [r for r in L.ledger(source).rows(P) if r.site == "bucket"]
    assert rows[-1].state == "transferred" and (rows[-1].detail["sent"], rows[-1].detail["already_there"]) == (
        len(objects) - 1, 1)
    assert L.set_status(source, P).state == "deployed"
    with pytest.raises(UnknownCollectionError):
        site.registry.get_chain("LSSTComCam/calib")
    # the site imports from its inbox URL (every checksum checked) and leaves its receipt there
    res = _cli(["rebuild-calib-chain", str(site.root), "--from-archive", f"{url}/.cpframe-inbox", "--raw-collection", RAW])
    assert res.exit_code == 0, res.output
    assert "self-check PASS" in res.output and site.registry.get_chain("LSSTComCam/calib") == (P,)
    assert json.loads(fs.cat_file(f"{inbox}/receipts/{m.id}.json"))["ok"] is True
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0 and "is distributed to every site" in res.output, res.output
    rows = [r for r in L.ledger(source).rows(P) if r.site == "bucket"]
    assert [r.state for r in rows] == ["failed", "transferred", "imported", "checked"]
    assert "self-check PASS" in rows[-1].why and rows[-1].detail["calib_chain"][0] == P
    assert L.set_status(source, P).state == "distributed"


def test_unreachable_fsspec_site_and_foreign_receipt_are_one_line(source, tmp_path, bucket, repo_factory):
    fs, url = bucket
    f = _sites_file(tmp_path, [{"name": "bucket", "repo": url}, {"name": "gone", "repo": url + "-missing"}])
    n = len(L.ledger(source).rows())
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8 and len(res.output.strip().splitlines()) == 1, res.output
    assert f"site gone: {url}-missing does not exist" in res.output
    assert len(L.ledger(source).rows()) == n and not (tmp_path / "archive").exists()
    f = _sites_file(tmp_path, [{"name": "odd", "repo": "nosuchfs://bucket/calib"}])  # no such fsspec filesystem
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8 and len(res.output.strip().splitlines()) == 1, res.output
    assert "site odd: cannot open nosuchfs://bucket/calib" in res.output
    assert len(L.ledger(source).rows()) == n and not (tmp_path / "archive").exists()
    # a receipt that answers another manifest is not taken for this one
    f = _sites_file(tmp_path, [{"name": "bucket", "repo": url}])
    m = archive_set(source, P, tmp_path / "archive")
    inbox = url.removeprefix("memory://") + "/.cpframe-inbox"
    fs.pipe_file(f"{inbox}/receipts/{m.id}.json", json.dumps({"set": P, "manifest": "0" * 64, "ok": True}).encode())
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 8 and "its receipt" in res.output and "is not an import of" in res.output, res.output
    assert L.set_status(source, P).state == "deployed"


@pytest.mark.slow
def test_sftp_site_without_cpframe_imports_from_its_inbox(source, repo_factory, tmp_path, sshd_server):
    """``import: site``: only SFTP reaches the site (a transfer node without cpframe); the site
    imports from its inbox and the source reads the receipt back over SFTP."""
    remote = _site(repo_factory("sqlite", "remote"))
    f = _sites_file(tmp_path, [{"name": "dtn", "repo": sshd_server.url(remote.root), "key_filename": str(sshd_server.key),
                                "import": "site"}])
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0 and "WAITING" in res.output, res.output
    inbox = remote.root / ".cpframe-inbox"
    assert f"cpframe rebuild-calib-chain {remote.root} --from-archive {inbox}" in res.output
    res = _cli(["rebuild-calib-chain", str(remote.root), "--from-archive", str(inbox)])
    assert res.exit_code == 0 and (inbox / "receipts").is_dir(), res.output
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 0 and "is distributed to every site" in res.output, res.output
    assert L.set_status(source, P).sites == {"archive": "exported", "dtn": "checked"}
    assert remote.registry.get_chain("LSSTComCam/calib") == (P,)


def test_sites_file_problems_are_listed_at_once(source, tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(json.dumps({"sites": [{"name": "x"}, {"name": "y", "repo": "/a", "colour": 1},
                                       {"name": "y", "repo": "/b"}], "extra": 1}))
    res = _cli(["distribute", str(source.root), P, "--sites", str(f)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    for words in ("unknown key(s) extra", "'archive' (the central archive folder) is missing", "site 1: needs name and repo",
                  "site y: unknown key(s) colour", "site y: name used twice"):
        assert words in res.output, res.output
