"""Deployment files: Dockerfile, Kubernetes manifests, and the README's Deployment section.

The Dockerfile lints clean and lets the config choose the store; the manifests validate against the
API schemas, pass Pod Security "restricted", keep the Secret apart and load as a real config.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sales_velocity.scheduler import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CRONJOBS = DEPLOY / "kubernetes-cronjob.yaml"
SECRET = DEPLOY / "kubernetes-secret.example.yaml"


def tool(name: str) -> str | None:
    """A console script installed beside this interpreter, else on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def docs(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a manifest file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def cronjobs() -> dict[str, dict[str, Any]]:
    """The CronJobs of the manifest, by name."""
    return {d["metadata"]["name"]: d for d in docs(CRONJOBS) if d["kind"] == "CronJob"}


def pod_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a CronJob."""
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


class TestDockerfile:
    def test_hadolint_finds_nothing(self) -> None:
        """The hadolint linter (a test extra) reports no problem in the Dockerfile."""
        hadolint = tool("hadolint")
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

    def test_the_image_does_not_override_the_configs_store(self) -> None:
        """The image sets only the default store (for configs without one), never VELOCITY_DATABASE_URL."""
        text = (ROOT / "Dockerfile").read_text()
        assert not re.search(r"^\s*VELOCITY_DATABASE_URL=", text, re.M)
        assert "VELOCITY_DEFAULT_DATABASE_URL=sqlite:////var/lib/velocity/velocity.db" in text


class TestKubernetes:
    def test_manifests_validate_against_the_kubernetes_schemas(self) -> None:
        """kubernetes-validate (a test extra, schemas bundled) accepts every manifest in strict mode."""
        validate = tool("kubernetes-validate")
        if validate is None:
            pytest.skip("kubernetes-validate is not installed")
        result = subprocess.run([validate, "--strict", "--quiet", str(CRONJOBS), str(SECRET)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_the_validator_rejects_a_misspelt_field(self, tmp_path: Path) -> None:
        """The validation above is not a rubber stamp: a misspelt key in the pod spec fails it."""
        validate = tool("kubernetes-validate")
        if validate is None:
            pytest.skip("kubernetes-validate is not installed")
        bad = tmp_path / "bad.yaml"
        bad.write_text(CRONJOBS.read_text().replace("restartPolicy: Never", "restartPolicyy: Never", 1))
        result = subprocess.run([validate, "--strict", "--quiet", str(bad)], capture_output=True,
                                text=True, check=False)
        assert result.returncode != 0

    def test_the_secret_is_kept_apart_from_the_jobs(self) -> None:
        """Re-applying the jobs' file cannot overwrite real secrets: it holds no Secret."""
        assert [d["kind"] for d in docs(CRONJOBS)] == ["ConfigMap", "CronJob", "CronJob"]
        assert [d["kind"] for d in docs(SECRET)] == ["Secret"]

    def test_a_daily_run_and_a_30_minute_sync(self) -> None:
        """Two CronJobs: `run` on weekday mornings, `sync` every 30 minutes; neither overlaps itself."""
        jobs = cronjobs()
        assert jobs["sales-velocity"]["spec"]["schedule"] == "0 7 * * 1-5"
        assert jobs["sales-velocity-sync"]["spec"]["schedule"] == "*/30 * * * *"
        for job in jobs.values():
            assert job["spec"]["concurrencyPolicy"] == "Forbid"
            deadline = job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
            assert 0 < deadline <= 3600
        assert pod_spec(jobs["sales-velocity"])["containers"][0]["args"] == ["run"]
        assert pod_spec(jobs["sales-velocity-sync"])["containers"][0]["args"] == ["sync"]
        sync_deadline = jobs["sales-velocity-sync"]["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        assert sync_deadline < 30 * 60  # done before the next one is due

    def test_pods_pass_pod_security_restricted(self) -> None:
        """Each pod and container meets the "restricted" profile, with writable volumes where needed."""
        for job in cronjobs().values():
            spec = pod_spec(job)
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            mounts_needed = {"/tmp", "/var/lib/velocity"}  # noqa: S108 - paths inside the pod
            for container in spec["containers"]:
                ctx = container["securityContext"]
                assert ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"]["drop"] == ["ALL"]
                assert "add" not in ctx["capabilities"]
                assert ctx["runAsNonRoot"] is True
                assert ctx["readOnlyRootFilesystem"] is True
                assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
                mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
                assert mounts_needed <= set(mounts)
                assert all(not m.get("readOnly") for p, m in mounts.items() if p in mounts_needed)
                assert not container["image"].endswith(":latest")
                assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+", container["image"])
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert all("hostPath" not in v for v in volumes.values())
            assert volumes["secrets"]["secret"]["secretName"] == "sales-velocity"

    def test_the_configmap_is_a_valid_config_reading_the_mounted_secret(self, tmp_path: Path) -> None:
        """The ConfigMap's velocity.toml loads, its secrets read from the files the Secret mounts."""
        config_map = next(d for d in docs(CRONJOBS) if d["kind"] == "ConfigMap")
        secret = next(iter(docs(SECRET)))
        mounted = tmp_path / "secrets"
        mounted.mkdir()
        for key, value in secret["stringData"].items():
            (mounted / key).write_text(value + "\n", encoding="utf-8")
        text = config_map["data"]["velocity.toml"].replace("/run/secrets/velocity", str(mounted))
        (tmp_path / "velocity.toml").write_text(text, encoding="utf-8")
        config = load_config(tmp_path / "velocity.toml", env={})
        assert config.store.url == secret["stringData"]["database_url"]
        assert config.metrics.textfile == "/var/lib/velocity/velocity.prom"
        assert secret["stringData"]["hubspot_token"] in config.secrets


    def test_each_sync_ends_before_its_job_is_killed(self, tmp_path: Path) -> None:
        """Sources x (sync deadline + one request deadline) fit in the sync job's activeDeadlineSeconds."""
        config_map = next(d for d in docs(CRONJOBS) if d["kind"] == "ConfigMap")
        mounted = tmp_path / "secrets"
        mounted.mkdir()
        for key, value in next(iter(docs(SECRET)))["stringData"].items():
            (mounted / key).write_text(value + "\n", encoding="utf-8")
        text = config_map["data"]["velocity.toml"].replace("/run/secrets/velocity", str(mounted))
        (tmp_path / "velocity.toml").write_text(text, encoding="utf-8")
        config = load_config(tmp_path / "velocity.toml", env={})
        job = cronjobs()["sales-velocity-sync"]["spec"]["jobTemplate"]["spec"]
        worst = sum(config.sync.deadline_seconds + getattr(s.settings, "request_deadline_seconds", 0)
                    for s in config.sources)
        assert worst < job["activeDeadlineSeconds"]


class TestReadme:
    def test_the_deployment_section_matches_deploy(self) -> None:
        """Every file in deploy/ is named in the README's Deployment section with its schedules."""
        readme = (ROOT / "README.md").read_text()
        section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
        for path in sorted(DEPLOY.iterdir()):
            assert f"deploy/{path.name}" in section, path.name
        for job in cronjobs().values():
            assert job["spec"]["schedule"] in section
        assert "VELOCITY_DEFAULT_DATABASE_URL" in section
        assert "${file:" in section
        assert "_FILE" in section
