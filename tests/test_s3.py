"""The model repository on object storage: the assembled, self-contained repository uploaded to
a real S3-compatible server (moto's, on 127.0.0.1) and served by tritonserver from s3://, under
the launcher in model-control mode none, as deploy/k8s runs it."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from client.core import BgeM3Client, SpladeClient
from splade_triton.artifacts.repository import assemble
from tests.conftest import bge_m3_pipeline, default_pipeline, free_port, running

BUCKET = "splade-models"
PREFIX = "model_repository"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
TEXTS = ["what is the capital of france", "learned sparse retrieval with splade", ""]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port (moto[server], from the dev lock)."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.is_file():
        pytest.fail(f"{moto} is missing: run script/setup (moto[server] is in requirements/dev.txt)")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "moto_server exited"
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not answer within 60 s"
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def upload(directory: Path, endpoint: str) -> list[str]:
    """What ``aws s3 sync DIRECTORY s3://BUCKET/PREFIX --exclude '*__pycache__*'`` does; the keys."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                      region_name=CREDENTIALS["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=BUCKET)
    keys = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            key = f"{PREFIX}/{path.relative_to(directory).as_posix()}"
            s3.upload_file(str(path), BUCKET, key)
            keys.append(key)
    return keys


@pytest.fixture(scope="module")
def s3_server(s3_endpoint, tmp_path_factory):
    """Both pipelines (splade and the tiny bge_m3), assembled, uploaded, served from s3://."""
    parent = tmp_path_factory.mktemp("s3-repository")
    repository = assemble(parent / "model_repository", [default_pipeline(), bge_m3_pipeline()])
    keys = upload(repository, s3_endpoint)
    # An ensemble's version folder is empty but for a marker: S3 has no empty folders.
    for ensemble in ("splade", "splade_embedding", "bge_m3", "bge_m3_colbert"):
        assert f"{PREFIX}/{ensemble}/1/.keep" in keys, f"no object in {ensemble}/1/"
    # Triton's S3 client takes the credentials from the environment, as in the pod (envFrom the Secret).
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        url = f"s3://{s3_endpoint}/{BUCKET}/{PREFIX}"  # s3://http://host:port/bucket/path: another S3 than AWS
        with running(url, parent / "server.log", launcher_args=("--model-control-mode", "none")) as srv:
            assert f"serving {url} on" in srv.log()  # the launcher passed the URL through, not a local copy
            yield srv


def test_served_from_s3_as_from_disk(s3_server, server):
    with SpladeClient(f"grpc://{s3_server.grpc_url}") as from_s3, SpladeClient(f"grpc://{server.grpc_url}") as local:
        got, expected = from_s3.encode(TEXTS, return_tokens=True), local.encode(TEXTS, return_tokens=True)
    assert got[0].top(2)[0][0] == "capital"
    for g, e in zip(got, expected):
        assert g.tokens == e.tokens
        np.testing.assert_array_equal(g.indices, e.indices)
        np.testing.assert_allclose(g.values, e.values, atol=1e-6)


def test_every_pipeline_of_the_repository_is_served_from_s3(s3_server):
    with BgeM3Client(f"http://{s3_server.http_url}") as m3:
        (embedding,) = m3.encode(TEXTS[:1], return_colbert_vecs=True)
    assert abs(float(np.linalg.norm(embedding.dense)) - 1.0) < 1e-5
    assert len(embedding.sparse) > 0 and embedding.colbert.shape[0] > 0
