"""A local S3 server for the remote-archive tests: moto's server on 127.0.0.1, fake credentials in
the environment (never the machine's own), and a helper that uploads an archive directory."""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

_bucket_ids = itertools.count()


@dataclass
class S3:
    endpoint: str

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint}

    @property
    def fs(self):
        import fsspec

        return fsspec.filesystem("s3", skip_instance_cache=True, **self.storage_options)

    def upload(self, archive: Path, key: str = "") -> str:
        """Copy the archive directory into a fresh bucket; its ``s3://`` URL."""
        bucket = f"test-{os.getpid()}-{next(_bucket_ids)}"
        fs = self.fs
        fs.mkdir(bucket)
        prefix = f"{bucket}/{key or Path(archive).name}"
        for f in sorted(Path(archive).rglob("*")):
            if f.is_file():
                fs.pipe(f"{prefix}/{f.relative_to(archive).as_posix()}", f.read_bytes())
        return f"s3://{prefix}"


@pytest.fixture(scope="session")
def s3():
    """The running server (started once per session)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                     "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
            mp.setenv(k, v)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield S3(f"http://{host}:{port}")
        finally:
            server.stop()
