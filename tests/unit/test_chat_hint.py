"""``pagedllm chat`` in a terminal says how to leave before the first prompt."""

from __future__ import annotations

import io

from pagedllm.entrypoints.cli.chat import _read_messages


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_chat_says_how_to_leave(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", _Terminal("hello\n\nexit\nnot read\n"))
    assert list(_read_messages()) == ["hello"]
    out = capsys.readouterr().out
    assert "To leave: Ctrl-D, Ctrl-C, or type exit" in out
    assert out.index("To leave") < out.index(">>>")


def test_piped_chat_prints_no_hint(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert list(_read_messages()) == ["hello"]
    assert capsys.readouterr().out == ""
