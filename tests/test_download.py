"""The one downloader: an interrupted download (even one the server closed cleanly) is kept and resumed
with a Range request; a server that ignores Range restarts it cleanly; a .part of unknown origin is not
trusted; sizes and checksums are verified. Against a local server (tests/helpers.py), no network."""

import hashlib
import json

import pytest

from tests.helpers import serving
from tinygrad_llm.support.download import DownloadError, download_file

DATA = bytes(range(256)) * 40  # 10,240 bytes


def test_a_cleanly_closed_connection_is_kept_and_resumed(tmp_path):
    dest = tmp_path / "data.bin"
    with serving({"/data.bin": DATA}) as server:
        server.cut_after = 3000  # the server sends 3,000 bytes and closes the connection without error
        with pytest.raises(DownloadError, match=r"interrupted at 3000 of 10240 bytes; .*data.bin.part is kept"):
            download_file(server.url + "/data.bin", dest, progress=False)
        assert (tmp_path / "data.bin.part").read_bytes() == DATA[:3000]
        assert download_file(server.url + "/data.bin", dest, progress=False) == dest
        assert server.requests == [("/data.bin", None), ("/data.bin", "bytes=3000-")]
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no .part, no record left


def test_a_server_that_ignores_range_restarts_cleanly(tmp_path):
    dest = tmp_path / "data.bin"
    with serving({"/data.bin": DATA}) as server:
        server.cut_after = 5000
        with pytest.raises(DownloadError, match="interrupted"):
            download_file(server.url + "/data.bin", dest, progress=False)
        server.ignore_range = True  # answers 200 and the whole file: appending it would double the start
        download_file(server.url + "/data.bin", dest, progress=False)
    assert dest.read_bytes() == DATA


def test_a_part_of_unknown_origin_is_not_resumed(tmp_path):
    """A corrupt .part with no record of what it is part of is downloaded anew, never completed and accepted."""
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"\0" * 1000)
    with serving({"/data.bin": DATA}) as server:
        with pytest.warns(UserWarning, match="not resuming a partial download with no record"):
            download_file(server.url + "/data.bin", dest, progress=False)
        assert server.requests == [("/data.bin", None)]
    assert dest.read_bytes() == DATA


def test_a_part_recorded_for_another_url_is_not_resumed(tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(DATA[:100])
    (tmp_path / "data.bin.part.json").write_text(json.dumps({"url": "http://elsewhere/x", "size": 10240}))
    with serving({"/data.bin": DATA}) as server:
        with pytest.warns(UserWarning):
            download_file(server.url + "/data.bin", dest, progress=False)
        assert server.requests == [("/data.bin", None)]
    assert dest.read_bytes() == DATA


def test_checksum_and_size_are_verified(tmp_path):
    with serving({"/data.bin": DATA}) as server:
        with pytest.raises(DownloadError, match=r"failed verification \(sha256 .*, expected 0000"):
            download_file(server.url + "/data.bin", tmp_path / "a.bin", sha256="0" * 64, progress=False)
        assert list(tmp_path.iterdir()) == []  # bytes that failed a check are not kept
        good = hashlib.sha256(DATA).hexdigest()
        download_file(server.url + "/data.bin", tmp_path / "a.bin", sha256=good, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == DATA


def test_a_resumed_download_is_checked_against_the_recorded_checksum(tmp_path):
    """The checksum given to the first try is recorded, so the resumed bytes are checked even if the
    caller (or a later run) does not pass it again."""
    dest = tmp_path / "data.bin"
    with serving({"/data.bin": DATA}) as server:
        server.cut_after = 4000
        with pytest.raises(DownloadError, match="interrupted"):
            download_file(server.url + "/data.bin", dest, sha256="f" * 64, progress=False)
        with pytest.raises(DownloadError, match="expected ffff"):
            download_file(server.url + "/data.bin", dest, progress=False)
