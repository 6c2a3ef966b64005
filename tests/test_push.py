"""tweetgen-train push: what it would send and where, with a stand-in for the Hub's API; the token never shows."""
from __future__ import annotations

import shutil

import pytest
from conftest import TINY_GPT2

pytest.importorskip("huggingface_hub")
pytest.importorskip("rich")

from tweetgen.trainer.cli import main  # noqa: E402

TOKEN = "hf_SeCrEtTokenValue1234567890"


class FakeHub:
    """Records the calls an HfApi would get; `fail` makes upload_folder raise like the Hub refusing."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.fail:
            from huggingface_hub.errors import HfHubHTTPError

            response = type("Response", (), {"status_code": 403, "headers": {}, "request": None})()
            raise HfHubHTTPError(f"403 Forbidden for token {TOKEN}", response=response)


@pytest.fixture
def export(tmp_path):
    folder = tmp_path / "bot"
    shutil.copytree(TINY_GPT2, folder)
    (folder / ".partial.tmp").write_text("leftover")
    return folder


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: fake if token == TOKEN else None)
    return fake


def test_push_creates_the_repo_and_sends_the_folder_s_files(export, hub, capsys):
    assert main(["push", "--model", str(export), "--repo-id", "alice/alice-bot", "--private"]) == 0
    (create, created), (upload, uploaded) = hub.calls
    assert create == "create_repo" and created == {"repo_id": "alice/alice-bot", "repo_type": "model",
                                                   "private": True, "exist_ok": True}
    assert upload == "upload_folder" and uploaded["repo_id"] == "alice/alice-bot"
    assert uploaded["folder_path"] == str(export)
    assert uploaded["allow_patterns"] == sorted(p.name for p in TINY_GPT2.iterdir())  # no hidden leftovers
    out = capsys.readouterr()
    assert "alice/alice-bot" in out.err and TOKEN not in out.out + out.err


@pytest.mark.parametrize("repo_id, message", [("alice-bot", "USER/NAME"), ("alice/bad name!", "not valid"),
                                              ("a/b/c", "USER/NAME")])
def test_a_malformed_repo_id_sends_nothing(export, hub, capsys, repo_id, message):
    assert main(["push", "--model", str(export), "--repo-id", repo_id]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and message in err and hub.calls == []


def test_a_folder_that_is_not_an_export_sends_nothing(tmp_path, hub, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert main(["push", "--model", str(tmp_path / "notes"), "--repo-id", "alice/bot"]) == 1
    assert "not a tweetgen export" in capsys.readouterr().err and hub.calls == []


def test_without_a_token_nothing_is_sent(export, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no token stored by `hf auth login` either
    sent = []
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: sent.append(token))
    assert main(["push", "--model", str(export), "--repo-id", "alice/bot"]) == 1
    assert "no Hugging Face token" in capsys.readouterr().err and sent == []


def test_the_hub_s_refusal_is_a_clear_error_without_the_token(export, hub, capsys):
    hub.fail = True
    assert main(["push", "--model", str(export), "--repo-id", "alice/bot"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and TOKEN not in err


def test_name_is_the_model_s_name_everywhere(tmp_path, capsys):
    """In fetch and clean, --as files tweets under a user; --name (a model's name) is refused with that hint."""
    assert main(["clean", "--file", str(tmp_path / "x.csv"), "--name", "me", "--workdir", str(tmp_path)]) == 2
    assert "--as NAME" in capsys.readouterr().err
