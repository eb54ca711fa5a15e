"""service.gthread_fence: the worker fails loudly, naming the version, when gunicorn moves."""

from __future__ import annotations

import tomllib
from importlib.metadata import version

import gunicorn
import pytest
from gunicorn.workers.gthread import ThreadWorker
from packaging.requirements import Requirement

from bench.server import REPO
from service.gthread_fence import check_gunicorn, missing_gthread_names


def test_the_installed_gunicorn_has_every_name_the_worker_uses() -> None:
    assert missing_gthread_names() == []
    check_gunicorn()


def test_the_installed_gunicorn_is_in_the_declared_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (declared,) = [
        Requirement(line) for line in project["dependencies"] if line.startswith("gunicorn")
    ]
    assert version("gunicorn") in declared.specifier, (version("gunicorn"), str(declared))


def test_a_moved_method_is_named_with_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ThreadWorker, "finish_request")
    with pytest.raises(ImportError, match=rf"gunicorn {gunicorn.__version__} .*finish_request"):
        check_gunicorn()


def test_a_changed_signature_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ThreadWorker, "accept", lambda self, listener, extra: None)
    assert missing_gthread_names() == ["ThreadWorker.accept('self', 'listener')"]


def test_an_attribute_gthread_no_longer_sets_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: ThreadWorker, *args: object) -> None:
        self.nr_conns = 0

    monkeypatch.setattr(ThreadWorker, "__init__", init)
    assert "ThreadWorker.keepalived_conns" in missing_gthread_names()
