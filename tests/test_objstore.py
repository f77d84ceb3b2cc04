"""``predict`` with object-store inputs and outputs (``s3://``, ``gs://``; :mod:`fsdistill.storage`).

S3 is served locally by moto's server (dev extra), reached through pyarrow's S3FileSystem with the endpoint in
``AWS_ENDPOINT_URL_S3``, the AWS SDK's own variable (what a user sets for an S3-compatible server). GCS cannot
be served locally: those tests only check that gs:// goes to pyarrow's GcsFileSystem, with an endpoint that
refuses. Tests that need pyarrow or moto skip without them; the Ray ones also need the ray extra.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.errors import ConfigError, DataError, DependencyError
from fsdistill.storage import ObjectStorage, open_storage

from helpers import assert_user_error

BUCKET = "fsd-test"


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint (moto) with the bucket BUCKET, and the environment that points pyarrow at it; yields
    pyarrow's filesystem of it."""
    pytest.importorskip("moto.server", reason="moto[server] serves S3 locally (dev extra)")
    pafs = pytest.importorskip("pyarrow.fs", reason="object stores go through pyarrow (the ray extra)")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ENDPOINT_URL_S3": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            env.setenv(name, value)
        fs = pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield fs
    server.stop()


def _upload(fs, folder: Path, prefix: str) -> str:
    """Copy every file below ``folder`` to ``s3://BUCKET/prefix/…``; returns that URI."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with fs.open_output_stream(f"{BUCKET}/{prefix}/{path.relative_to(folder).as_posix()}") as handle:
                handle.write(path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def _download(fs, prefix: str) -> dict[str, bytes]:
    """Every object below ``s3://BUCKET/prefix`` by its key relative to the prefix."""
    from pyarrow.fs import FileSelector, FileType

    base = f"{BUCKET}/{prefix}"
    tree = {}
    for info in fs.get_file_info(FileSelector(base, recursive=True, allow_not_found=True)):
        if info.type == FileType.File:
            with fs.open_input_file(info.path) as handle:
                tree[info.path[len(base) + 1 :]] = handle.read()
    return tree


def _local_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def heldout(examples_root, tmp_path_factory) -> Path:
    """The nuclei held-out images, and one corrupt file beside them."""
    root = tmp_path_factory.mktemp("objstore_in") / "images"
    shutil.copytree(examples_root / "nuclei" / "heldout" / "images", root)
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


@pytest.fixture(scope="module")
def local_reference(heldout, shaken_multi_student, tmp_path_factory) -> Path:
    """A local predict of ``heldout`` with overlays: what every object-store run must write."""
    out = tmp_path_factory.mktemp("objstore_ref") / "out"
    # Batches of one: outputs compared byte for byte must not depend on which images share a batch (a shard pairs
    # them otherwise, and a conv's float sums can differ with the batch, flipping a near-tie pixel).
    result = api.predict([heldout], out, shaken_multi_student, device="cpu", workers=0, batch_size=1, overlay=True)
    assert result.written == 8 and [path for path, _ in result.failed] == [str(heldout / "broken.png")]
    return out


def _expected(reference: Path, local_input: Path, uri: str) -> dict[str, bytes]:
    """The reference outputs as an object-store run writes them, :func:`_unstamped`: predictions.csv names each
    image by its URI, and a mask's ``fsdistill:source`` chunk gives the object's size and date, not the file's."""
    tree = _local_tree(reference)
    tree["predictions.csv"] = tree["predictions.csv"].replace(str(local_input).encode(), uri.encode())
    return _unstamped(tree)


def _unstamped(tree: dict[str, bytes]) -> dict[str, bytes]:
    """``tree`` with the ``fsdistill:source`` chunk of each mask left out, after checking that it has one."""
    from fsdistill.infer.predictor import SOURCE_KEY

    masks = {name: data for name, data in tree.items() if name.startswith("masks/")}
    assert all(SOURCE_KEY.encode() + b"\0" in data for data in masks.values())  # every mask names its source
    return tree | {name: _without_source_chunk(data) for name, data in masks.items()}


def _without_source_chunk(png: bytes) -> bytes:
    """``png`` without its ``fsdistill:source`` tEXt chunk (every other byte as it is)."""
    import struct

    from fsdistill.infer.predictor import SOURCE_KEY

    out, at = bytearray(png[:8]), 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, end = png[at + 4 : at + 8], at + 12 + length
        if not (kind == b"tEXt" and png[at + 8 : at + 8 + length].startswith(SOURCE_KEY.encode() + b"\0")):
            out += png[at:end]
        at = end
    return bytes(out)


def _predict(inputs, out, model, **kw):
    kw = {"device": "cpu", "workers": 0, "batch_size": 1, "overlay": True, **kw}  # see local_reference
    return api.predict(inputs, out, model, **kw)


@pytest.mark.examples
def test_s3_to_s3_equals_local_predict_and_resumes(s3, heldout, local_reference, shaken_multi_student) -> None:
    source = _upload(s3, heldout, "local-engine/in")
    result = _predict([source], f"s3://{BUCKET}/local-engine/out", shaken_multi_student)
    assert result.written == 8 and result.skipped == 0
    assert [path for path, _ in result.failed] == [f"{source}/broken.png"]  # that image's error, not the run's
    assert f"{source}/broken.png" in result.failed[0][1]
    assert "BytesIO" not in result.failed[0][1]  # Pillow's "cannot identify image file <_io.BytesIO object at 0x…>"
    assert result.csv_path == f"s3://{BUCKET}/local-engine/out/predictions.csv"
    expected = _expected(local_reference, heldout, source)
    assert _unstamped(_download(s3, "local-engine/out")) == expected  # masks, overlays, CSV and manifest, byte for byte
    # Resume against the bucket: only the image whose mask is gone is predicted again.
    s3.delete_file(f"{BUCKET}/local-engine/out/masks/dsb2018_r2c1.png")
    again = _predict([source], f"s3://{BUCKET}/local-engine/out", shaken_multi_student)
    assert again.written == 1 and again.skipped == 7 and len(again.failed) == 1
    assert _unstamped(_download(s3, "local-engine/out")) == expected


@pytest.mark.examples
def test_s3_input_to_a_local_folder_and_back(s3, heldout, local_reference, shaken_multi_student, tmp_path) -> None:
    source = _upload(s3, heldout, "mixed/in")
    _predict([source], tmp_path / "out", shaken_multi_student)
    assert _unstamped(_local_tree(tmp_path / "out")) == _expected(local_reference, heldout, source)
    _predict([heldout], f"s3://{BUCKET}/mixed/out", shaken_multi_student)
    assert _download(s3, "mixed/out") == _local_tree(local_reference)
    # An object replaced in the bucket is predicted again on resume (its mask kept its old prediction: object-store
    # images had no source stamp), the others are not.
    key = f"{BUCKET}/mixed/in/dsb2018_r2c1.png"
    with s3.open_output_stream(key) as handle:
        handle.write((heldout / "dsb2018_r3c0.png").read_bytes())
    again = _predict([source], tmp_path / "out", shaken_multi_student)
    assert again.written == 1 and again.skipped == 7
    # an object given alone (never listed) is stamped too, from the request that found it
    from fsdistill.infer.predictor import list_images

    ((single, _),) = list_images([f"s3://{key}"])
    assert single.stamp is not None
    assert (tmp_path / "out" / "masks" / "dsb2018_r2c1.png").read_bytes() != (
        local_reference / "masks" / "dsb2018_r2c1.png"
    ).read_bytes()


@pytest.mark.ray
@pytest.mark.examples
def test_ray_engine_s3_to_s3_equals_local_predict_and_resumes(
    ray_cluster, s3, heldout, local_reference, shaken_multi_student
) -> None:
    """The actors read the images from the bucket themselves (the driver's filesystem, pickled with its endpoint)."""
    source = _upload(s3, heldout, "ray/in")
    result = _predict([source], f"s3://{BUCKET}/ray/out", shaken_multi_student, engine="ray", workers=2)
    assert result.written == 8 and [path for path, _ in result.failed] == [f"{source}/broken.png"]
    expected = _expected(local_reference, heldout, source)
    assert _unstamped(_download(s3, "ray/out")) == expected
    s3.delete_file(f"{BUCKET}/ray/out/masks/dsb2018_r3c0.png")
    s3.delete_file(f"{BUCKET}/ray/out/overlays/dsb2018_r3c2.png")
    again = _predict([source], f"s3://{BUCKET}/ray/out", shaken_multi_student, engine="ray", workers=1)
    assert again.written == 2 and again.skipped == 6 and _unstamped(_download(s3, "ray/out")) == expected


def test_the_output_folder_inside_an_input_prefix_is_not_read_back(s3, shaken_multi_student, tmp_path) -> None:
    from helpers import SynData

    for i in range(3):
        SynData.save(tmp_path / "q" / f"im{i}.png", SynData.image(30 + i, 40, i))
    source = _upload(s3, tmp_path / "q", "nested/q")
    first = _predict([source], f"{source}/pred", shaken_multi_student)
    second = _predict([source], f"{source}/pred", shaken_multi_student)
    assert (first.written, second.written, second.skipped) == (3, 0, 3)
    # Nor is an earlier run's -o (a folder holding a predict manifest) when another -o is given.
    third = _predict([source], f"{source}/pred2", shaken_multi_student)
    assert third.written == 3


def test_s3_errors_are_one_sentence_and_exit_2(s3, shaken_multi_student, tmp_path) -> None:
    runner = CliRunner()
    args = ["--model", str(shaken_multi_student), "--device", "cpu", "--quiet"]
    missing = runner.invoke(app, ["predict", "s3://no-such-bucket/images", "-o", str(tmp_path / "o"), *args])
    assert_user_error(missing, "s3://no-such-bucket/images", "does not exist")
    (tmp_path / "in").mkdir()
    from helpers import SynData

    SynData.save(tmp_path / "in" / "a.png", SynData.image(20, 20, 0))
    no_bucket = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", "s3://no-such-bucket/out", *args])
    assert_user_error(no_bucket, "s3://no-such-bucket/out", "bucket")
    unreachable = "s3://fsd-test/images?endpoint_override=127.0.0.1:1&scheme=http"
    refused = runner.invoke(app, ["predict", unreachable, "-o", str(tmp_path / "o"), *args])
    assert_user_error(refused, "Cannot reach s3://fsd-test/images (", "endpoint")


def test_gs_goes_to_pyarrows_gcs_filesystem() -> None:
    pafs = pytest.importorskip("pyarrow.fs")
    storage = open_storage("gs://some-bucket/images")
    assert isinstance(storage, ObjectStorage) and isinstance(storage.fs, pafs.GcsFileSystem)
    assert storage.display("a.png") == "gs://some-bucket/images/a.png"
    # An endpoint that refuses (no network needed), tried for at most a second: one sentence naming the URI.
    refusing = open_storage("gs://some-bucket/images?endpoint_override=127.0.0.1:1&scheme=http&retry_limit_seconds=1")
    with pytest.raises(DataError, match=r"^Cannot reach gs://some-bucket/images \(") as caught:
        refusing.kind()
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="gs://bucket/prefix"):
        open_storage("gs://some-bucket/images?no_such_option=1")


def test_gs_requests_are_retried_for_a_bounded_time(monkeypatch) -> None:
    """Without credentials or network a gs:// predict hung for GCS's 15 minutes of retries, printing nothing."""
    pafs = pytest.importorskip("pyarrow.fs")
    from types import SimpleNamespace

    from fsdistill import storage

    opened = []
    recording = SimpleNamespace(from_uri=lambda uri: opened.append(uri) or pafs.FileSystem.from_uri(uri))
    monkeypatch.setattr(storage, "_pyarrow_fs", lambda: SimpleNamespace(FileSystem=recording))
    open_storage("gs://some-bucket/images")
    open_storage("gs://some-bucket/images?endpoint_override=127.0.0.1:1&scheme=http")
    open_storage("gs://some-bucket/images?retry_limit_seconds=300")  # the user's own bound
    bound = f"retry_limit_seconds={storage.GCS_RETRY_LIMIT_S}"
    assert opened == [
        f"gs://some-bucket/images?{bound}",
        f"gs://some-bucket/images?endpoint_override=127.0.0.1:1&scheme=http&{bound}",
        "gs://some-bucket/images?retry_limit_seconds=300",
    ]
    with pytest.raises(ConfigError, match=r"^Cannot use gs://some-bucket/images\?no_such_option=1 \("):
        open_storage("gs://some-bucket/images?no_such_option=1")  # the URI as given
    with pytest.raises(ConfigError, match="names no bucket"):
        open_storage("s3://")


def test_unknown_scheme_is_one_sentence_and_exit_2(shaken_multi_student, tmp_path) -> None:
    args = ["--model", str(shaken_multi_student), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, ["predict", "ftp://host/images", "-o", str(tmp_path / "o"), *args])
    assert_user_error(result, "ftp://", "s3://bucket/prefix")
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "-o", "hdfs://host/out", *args])
    assert_user_error(result, "hdfs://")
    assert not (tmp_path / "o").exists()


def test_uri_without_pyarrow_names_the_ray_extra(shaken_multi_student, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)
    with pytest.raises(DependencyError, match=r"fsdistill\[ray\]"):
        open_storage("s3://bucket/images")
    args = ["--model", str(shaken_multi_student), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(app, ["predict", "gs://bucket/images", "-o", str(tmp_path / "o"), *args])
    assert_user_error(result, "pip install 'fsdistill[ray]'")


def test_formats_need_a_local_output(s3, shaken_multi_student, tmp_path) -> None:
    with pytest.raises(ConfigError, match="local -o folder"):
        _predict([tmp_path], "s3://bucket/out", shaken_multi_student, formats="coco")


@pytest.mark.examples
def test_shards_into_a_bucket_merge_to_the_unsharded_outputs(
    s3, heldout, local_reference, shaken_multi_student
) -> None:
    """A job array writing to one bucket prefix: the last shard merges the shard tables into predictions.csv."""
    source = _upload(s3, heldout, "shards/in")
    out = f"s3://{BUCKET}/shards/out"
    first = _predict([source], out, shaken_multi_student, shard="0/2")
    assert first.csv_path == f"{out}/predictions.shard-0-of-2.csv"  # the other shard's table is not there yet
    second = _predict([source], out, shaken_multi_student, shard="1/2")
    assert second.csv_path == f"{out}/predictions.csv"
    assert first.written + second.written == 8
    tree = _unstamped(_download(s3, "shards/out"))
    assert {name for name in tree if name.startswith("predictions.shard-")} == {
        "predictions.shard-0-of-2.csv",
        "predictions.shard-1-of-2.csv",
    }
    expected = _expected(local_reference, heldout, source)
    assert {k: v for k, v in tree.items() if not k.startswith("predictions.shard-")} == expected


@pytest.mark.examples
def test_the_summary_names_the_output_without_the_uris_query(s3, heldout, shaken_multi_student, tmp_path) -> None:
    """`-o s3://b/out?endpoint_override=…` printed "-> s3://b/out?endpoint_override=…/masks", a path that is not."""
    source = _upload(s3, heldout, "query/in")
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"].split("://", 1)[1]
    out = f"s3://{BUCKET}/query/out?endpoint_override={endpoint}&scheme=http"
    args = ["predict", source, "-o", out, "--model", str(shaken_multi_student), "--device", "cpu", "--workers", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2  # broken.png
    assert f"8 written, 0 already done, 1 failed -> s3://{BUCKET}/query/out/masks\n" in result.output
