"""The project's files a user and a citer look for, and ``ocp-graphpar --version``."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import yaml

import ocp_graphpar

ROOT = Path(__file__).resolve().parents[2]
PAPER = "Towards Training Billion Parameter Graph Neural Networks for Atomic Simulations"


def setup_cfg_version() -> str:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config["metadata"]["version"]


def test_version_option_prints_the_package_version():
    result = subprocess.run(
        [sys.executable, "-m", "ocp_graphpar.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert result.stdout.strip() == f"ocp-graphpar {setup_cfg_version()}"
    assert ocp_graphpar.__version__ == setup_cfg_version()


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_citation_cites_the_software_and_the_paper():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["title"] == "ocp-graphpar"
    assert citation["version"] == setup_cfg_version()
    assert citation["license"] == "MIT"
    paper = citation["preferred-citation"]
    assert paper["title"] == PAPER
    assert paper["type"] == "conference-paper"
    assert paper["year"] == 2022
    assert paper["authors"][0]["family-names"] == "Sriram"


def test_changelog_and_contributing_guide_exist():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog")
    assert setup_cfg_version() in changelog
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "docs/porting.md" in contributing
    assert (ROOT / "docs" / "porting.md").exists()
