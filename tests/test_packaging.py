"""emotrain as an installed package: the wheel's contents and what a site-packages install records.

CI installs the built wheel in fresh venvs and runs it from outside the checkout (.ci/wheel).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import CONFIG_DIR, REPO_ROOT


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("emotrain-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_wheel_holds_the_configs(wheel_names):
    """The built wheel carries every config file (CI then installs it in a fresh venv: .ci/wheel)."""
    names = wheel_names
    expected = {f"emotrain/conf/{p.relative_to(CONFIG_DIR).as_posix()}" for p in CONFIG_DIR.rglob("*.yaml")}
    assert len(expected) > 30 and expected <= names, sorted(expected - names)


def test_wheel_holds_the_sample_data_and_no_tests(wheel_names):
    names = wheel_names
    assert "emotrain/data/resources/sample/train.csv" in names and "emotrain/__main__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "conf/"))]


def test_git_info_of_an_installed_package_is_none_inside_another_repository(tmp_path):
    """A wheel installed into a venv inside the user's own git repository must not record that repository's commit."""
    repo = tmp_path / "user_project"
    site = repo / ".venv" / "lib" / "site-packages"
    shutil.copytree(
        REPO_ROOT / "emotrain", site / "emotrain", ignore=shutil.ignore_patterns("__pycache__", "conf", "resources")
    )
    for cmd in (
        ["init", "-q"],
        ["-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "user's commit"],
    ):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    code = "from emotrain.reproducibility import git_info; print(git_info())"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{'commit': None, 'dirty': None}"
    if (REPO_ROOT / ".git").exists():  # the checkout's own package still records its commit
        own = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "'commit': None" not in own.stdout, own.stdout
