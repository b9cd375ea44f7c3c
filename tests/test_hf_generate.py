"""`delta-attn generate`: a prompt on stdin or in a file, streamed with Δ prefill."""

from __future__ import annotations

import io

from delta_attn import cli


def test_generate_from_stdin_and_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France? Answer in one word."))
    assert cli.main(["generate", "--max-new-tokens", "12", "--window", "16", "--sink", "4", "--gamma", "8"]) == 0
    assert "Paris" in capsys.readouterr().out
    prompt = tmp_path / "p.txt"
    prompt.write_text("The capital of France is", encoding="utf-8")
    assert (
        cli.main(
            [
                "generate",
                str(prompt),
                "--raw",
                "--max-new-tokens",
                "3",
                "--mode",
                "sparse",
                "--chunk-size",
                "2",
                "--dense-layers",
                "0,1",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "Paris" in captured.out and "sparse prefill" in captured.err
