"""The chat template and `mylm tokenizer ...`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mylm_jax.cli import main
from mylm_jax.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from tests.tokenizer_data import english_text

ROOT = Path(__file__).parents[1]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say <|end|> hi"},
    {"role": "assistant", "content": "Hi!"},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([english_text()], 400, progress=False)


def test_render_template_and_mask(tok):
    ids, mask = tok.render(CONVERSATION)
    sp = tok.special_tokens
    expected = ([sp["<|bos|>"], sp["<|system|>"], *tok.encode("Be brief."), sp["<|end|>"],
                 sp["<|user|>"], *tok.encode("Say <|end|> hi"), sp["<|end|>"],
                 sp["<|assistant|>"], *tok.encode("Hi!"), sp["<|end|>"]])
    assert ids == expected
    n_answer = len(tok.encode("Hi!")) + 1
    assert mask == [0] * (len(ids) - n_answer) + [1] * n_answer  # assistant content + its <|end|>
    assert ids.count(sp["<|end|>"]) == 3  # the user's "<|end|>" is plain text


def test_visualize_marks_trained_parts(tok):
    shown = tok.visualize(*tok.render(CONVERSATION))
    assert shown == "<|bos|><|system|>Be brief.<|end|><|user|>Say <|end|> hi<|end|><|assistant|>[[Hi!<|end|>]]"
    assert "\033[42;30mHi!<|end|>" in tok.visualize(*tok.render(CONVERSATION), color=True)


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}], "message 1: unknown role 'bot'"),
    ([{"role": "user", "content": 3}], "message 0: content must be a str, got int"),
    (["hello"], "message 0: expected a dict"),
    ([], "messages must be a non-empty list"),
])
def test_render_errors_name_the_message(tok, messages, message):
    with pytest.raises(TokenizerError, match=message):
        tok.render(messages)


def test_render_needs_chat_tokens():
    plain = train_tokenizer(["abc"], 260, special_tokens=["<|endoftext|>"], progress=False)
    with pytest.raises(TokenizerError, match="no chat tokens"):
        plain.render(CONVERSATION)


def test_cli_train_inspect_encode_decode_export(tmp_path, capsys):
    records = tmp_path / "docs.jsonl"
    records.write_text("\n".join(json.dumps({"text": line}) for line in english_text().splitlines()[:300]))
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", str(records), "--field", "text", "--vocab-size", "300",
                 "--out", str(out), "--quiet"]) == 0
    tok = Tokenizer.load(out)
    assert main(["tokenizer", "inspect", "--tokenizer", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "vocab size      300" in shown and tok.fingerprint() in shown and "<|endoftext|>=293" in shown
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--text", "Swift<|endoftext|>",
                 "--allow-special"]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == tok.encode("Swift<|endoftext|>", allowed_special="all")
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *ids]) == 0
    assert capsys.readouterr().out == "Swift<|endoftext|>\n"
    assert main(["tokenizer", "export-hf", "--tokenizer", str(out), "--out", str(tmp_path / "hf.json")]) == 0
    assert json.loads((tmp_path / "hf.json").read_text())["model"]["type"] == "BPE"


@pytest.mark.parametrize("args, message", [
    (["train", "missing.txt", "--vocab-size", "300", "--out", "x.json"],
     "mylm: error: input not found: missing.txt"),
    (["train", "pyproject.toml", "--vocab-size", "300", "--out", "x.json", "--on-error", "fail"],
     "mylm: error: pyproject.toml: unknown extension '.toml'"),
    (["inspect", "--tokenizer", "README.md"], "mylm: error: README.md: not valid JSON"),
    (["decode", "--tokenizer", "missing.json", "1"], "mylm: error: tokenizer file not found: missing.json"),
])
def test_cli_mistakes_print_one_line_and_exit_2(args, message):
    result = subprocess.run([sys.executable, "-m", "mylm_jax.cli", "tokenizer", *args], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_cli_bad_vocab_size_and_json_input(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.json").write_text("[{\"text\": 1")
    for args, message in [
        (["a.txt", "--vocab-size", "10"], "mylm: error: vocab_size=10 is too small"),
        (["b.json", "--vocab-size", "300", "--on-error", "fail"], "mylm: error: b.json:1: invalid JSON"),
        (["b.json", "--field", "body", "--vocab-size", "300"], "mylm: error: no training text"),
    ]:
        result = subprocess.run([sys.executable, "-m", "mylm_jax.cli", "tokenizer", "train", *args,
                                 "--out", "t.json", "--quiet"], capture_output=True, text=True, cwd=tmp_path,
                                env={"PYTHONPATH": str(ROOT)})
        assert result.returncode == 2 and result.stderr.strip().startswith(message), result.stderr
