"""A private Azurite blob service, from the npm install in .stack/azurite/node_modules/.bin/azurite-blob,
run with `node`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.private.base import ROOT, STACK, Service, missing, port_open, stop_process, wait_ready

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_CONTAINER = "delta-lake"


class PrivateAzurite(Service):
    """Azurite's blob service with the container `delta-lake`. delta-rs (object_store) sends
    emulator traffic to $AZURITE_BLOB_STORAGE_URL, so `env` points a process at this instance."""

    name = "azurite"

    def __init__(self, base: Path):
        self.bin = STACK / "azurite" / "node_modules" / ".bin" / "azurite-blob"
        if not self.bin.exists():
            missing(f"Azurite: {self.bin} is missing")
        if shutil.which("node") is None:
            missing("Azurite: `node` is not on PATH")
        self.proc: subprocess.Popen | None = None
        super().__init__(base)
        self.data = base / "data"
        self.data.mkdir(exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT,
            "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURE_CONTAINER_NAME": AZURITE_CONTAINER,
            "AZURITE_BLOB_STORAGE_URL": self.url,
        }

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "private azurite is already running"
        with self.log.open("a") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} starting private azurite =====\n")
            out.flush()
            self.proc = subprocess.Popen(
                [
                    str(self.bin),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--location",
                    str(self.data),
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        script = ROOT / "scripts" / "lib" / "azurite_container.py"

        def ready() -> bool:
            if not port_open(self.port):
                return False
            return (
                subprocess.run(
                    [
                        sys.executable,
                        str(script),
                        "--endpoint",
                        f"{self.url}/{AZURITE_ACCOUNT}",
                        "ensure",
                        AZURITE_CONTAINER,
                    ],
                    capture_output=True,
                    timeout=30,
                ).returncode
                == 0
            )

        wait_ready(ready, "azurite", self.log, self.proc)

    def stop(self) -> None:
        """Stop answering. SIGTERM, not SIGKILL: Azurite keeps blob metadata in memory and saves it
        every 5 s, so a SIGKILL would lose writes it acknowledged, which Azure itself never does."""
        stop_process(self.proc, signal.SIGTERM, grace=30)

    def _halt(self) -> None:
        stop_process(self.proc, signal.SIGKILL)
