"""Deployment files: the Dockerfile lints clean and runs as non-root; the CronJob forbids overlap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


class TestDockerfile:
    def test_hadolint_finds_nothing(self) -> None:
        """The hadolint linter (a test extra) reports no problem in the Dockerfile."""
        beside = Path(sys.executable).with_name("hadolint")
        hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
        if hadolint is None:
            pytest.skip("hadolint is not installed")
        result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_runs_velocity_run_as_a_non_root_user(self) -> None:
        """The image's last USER is not root and its default command is `velocity run`."""
        lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
        users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
        assert users
        assert users[-1] not in ("root", "0")
        assert 'ENTRYPOINT ["velocity"]' in lines
        assert 'CMD ["run"]' in lines


class TestKubernetes:
    def test_cronjob_forbids_overlap_and_reads_secrets(self) -> None:
        """The CronJob uses concurrencyPolicy Forbid and takes the store URL and tokens from a Secret."""
        docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes-cronjob.yaml").read_text()))
        cronjob = next(d for d in docs if d["kind"] == "CronJob")
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"][0]["secretRef"]["name"] == "sales-velocity"
        secret = next(d for d in docs if d["kind"] == "Secret")
        assert "VELOCITY_DATABASE_URL" in secret["stringData"]
