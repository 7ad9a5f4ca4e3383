"""Every command example in README.md and docs/ still works (issue 15, item 5).

The examples are taken from the pages' code blocks: fenced ```bash / ```sh / ```console
blocks (in console blocks only the `$ ` lines; the lines after one, up to the next `$ `,
are its output) and indented code blocks. Backslash-continued lines are joined, `#`
comments dropped, `a && b`, `a; b` and `a | b` split. Optional groups written as
`[--flag value]` count as given; other bracketed placeholders (`[section.key=value ...]`,
`[sampling options]`) are dropped. A command is checked when it starts with `mylm`,
`python scripts/`, `python -m`, `bash scripts/` or `pip install`:

    mylm ...            parsed with the real parser (mylm_jax.cli.build_parser); its config
                        (--config and the section.key=value overrides) loaded and validated;
                        files it names under configs/, scripts/, tests/ or ../shared/ must
                        exist. The quick ones, which need no run directory or dataset
                        (config, params, optim, tokenizer encode / decode / export-hf /
                        inspect against a small tokenizer made in a temporary directory,
                        --help), run; where the page shows `mylm: error: ...` after the
                        command, that exact error is expected.
    python scripts/X.py the script's --help runs, and every --flag of the line is in it;
                        section.key=value overrides are validated as a config.
    python -m X         X is importable (`python -m mylm_jax.cli` is checked as `mylm`);
                        the test files of `python -m pytest` exist. Nothing is run.
    bash scripts/X.sh   the script exists and `bash -n` accepts it.
    pip install         each extra named (".[a,b]") exists in pyproject.toml. pip never runs.

Commands named inline in the prose (`mylm checkpoint show --weights`, `mylm tokenizer
train / encode`) are checked more lightly, one test per page: each command and
subcommand exists and takes the flags written; scripts, test files and extras exist.

A failure names the page, the line and the command. Run it alone:

    python -m pytest -q -n 0 tests/test_doc_commands.py
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PREFIXES = ("mylm ", "python scripts/", "python -m ", "bash scripts/", "pip install ")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# Commands that need no run directory or dataset: they run, in-process.
QUICK = {("config",), ("params",), ("optim",), ("tokenizer", "encode"), ("tokenizer", "decode"),
         ("tokenizer", "export-hf"), ("tokenizer", "inspect")}
# A value written as a placeholder (`--step N`, `RUN_DIR`) parses as 1.
PLACEHOLDER, PLACEHOLDER_VALUE = re.compile(r"^[A-Z][A-Z0-9_]*$"), "1"
CHECKED_PATH = re.compile(r"^(configs|scripts|tests|parity_tests|\.\./shared)/")


def doc_files() -> list[Path]:
    """README.md and every page under docs/ (docs/tutorial.md, docs/zh/ included once they exist)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass
class Example:
    doc: str      # path relative to the repository root
    line: int     # 1-based line of the command's first line
    text: str     # the command as written (continuations joined)
    argv: list[str]
    output: list[str] = field(default_factory=list)  # console blocks: the lines shown after it

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


# -- extraction ---------------------------------------------------------------------------------------

def _shell_lines(doc: str, block: list[tuple[int, str]], console: bool) -> list[tuple[int, str, list[str]]]:
    """(line, command text, output lines) for each command of one code block."""
    out: list[tuple[int, str, list[str]]] = []
    i = 0
    while i < len(block):
        number, raw = block[i]
        text = raw.strip()
        i += 1
        if console:
            if not text.startswith("$ "):
                if out:
                    out[-1][2].append(text)
                continue
            text = text[2:].strip()
        elif not text or text.startswith("#"):
            continue
        while text.endswith("\\") and i < len(block):
            text = text[:-1].rstrip() + " " + block[i][1].strip()
            i += 1
        out.append((number, text, []))
    return out


def _blocks(path: Path) -> list[tuple[bool, list[tuple[int, str]]]]:
    """(console?, [(line number, line)]) for each shell code block of a page: fenced blocks
    tagged bash / sh / shell / console, and indented (4-space) blocks outside fences."""
    blocks: list[tuple[bool, list[tuple[int, str]]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence: str | None = None
    current: list[tuple[int, str]] | None = None
    previous_blank = True
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                if fence in SHELL_LANGS:
                    blocks.append((fence == "console", current or []))
                fence, current = None, None
            else:
                current.append((number, line))
            continue
        if stripped.startswith("```"):
            fence, current = stripped[3:].strip().lower(), []
            previous_blank = False
            continue
        indented = line.startswith("    ") and stripped != ""
        if indented and (current is not None or previous_blank):
            if current is None:
                current = []
                blocks.append((False, current))
            current.append((number, line))
        elif stripped:
            current = None
        previous_blank = stripped == ""
    return blocks


def _drop_placeholders(tokens: list[str]) -> list[str]:
    """`[--flag value]` -> `--flag value`; `[section.key=value ...]`, `[sampling options]` -> nothing."""
    out: list[str] = []
    group: list[str] | None = None
    for token in tokens:
        if group is None and token.startswith("[") and not token.startswith("[]"):
            group = []
            token = token[1:]
        if group is None:
            if token != "...":
                out.append(token)
            continue
        end = token.endswith("]")
        group.append(token[:-1] if end else token)
        if end:
            if group and group[0].startswith("-"):
                out.extend(t for t in group if t != "...")
            group = None
    return out


def _split_commands(text: str) -> list[list[str]]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def extract(path: Path) -> list[Example]:
    doc = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    examples: list[Example] = []
    for console, block in _blocks(path):
        for number, text, output in _shell_lines(doc, block, console):
            if not any(prefix.strip() in text for prefix in PREFIXES):
                continue
            try:
                commands = _split_commands(text)
            except ValueError as e:  # an unclosed quote: the example cannot be right
                examples.append(Example(doc, number, text, ["<unsplittable>", str(e)], output))
                continue
            for argv in commands:
                argv = _drop_placeholders(argv)
                line = " ".join(argv)
                if line.startswith("python -m mylm_jax.cli"):
                    argv = ["mylm", *argv[3:]]
                if (" ".join(argv) + " ").startswith(PREFIXES) or argv[0] == "<unsplittable>":
                    examples.append(Example(doc, number, text, argv, output))
    return examples


EXAMPLES = [e for path in doc_files() for e in extract(path)]


def test_the_pages_have_examples():
    """The extraction finds the examples (a broken extractor would make every other test vacuous)."""
    kinds = {e.argv[0] + (" " + e.argv[1] if e.argv[0] != "mylm" else "") for e in EXAMPLES}
    assert len(EXAMPLES) >= 20, [str(e) for e in EXAMPLES]
    assert {"mylm", "pip install"} <= kinds, kinds


# -- the checks ---------------------------------------------------------------------------------------

def fail(example: Example, problem: str):
    pytest.fail(f"{example}\n    {problem}", pytrace=False)


def check_paths(example: Example, tokens: list[str]) -> None:
    for token in tokens:
        value = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
        if CHECKED_PATH.match(value):
            if value.startswith("../shared") and not SHARED.is_dir():
                continue  # a checkout without the shared data: nothing to check against
            if not (ROOT / value).exists():
                fail(example, f"{value}: no such file or directory")


@functools.lru_cache(maxsize=None)
def mylm_parser():
    from mylm_jax.cli import build_parser

    return build_parser()


def parse_mylm(example: Example, argv: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return mylm_parser().parse_args(argv)
        except SystemExit as e:
            if e.code == 0:
                return None  # --help
            fail(example, "the parser refuses it: " + err.getvalue().strip().splitlines()[-1])


def command_path(args) -> tuple[str, ...]:
    sub = [getattr(args, name) for name in vars(args) if name.endswith("_command") and getattr(args, name)]
    return (args.command, *sub)


def validate_config(example: Example, args, expected_error: str | None) -> None:
    from mylm_jax.config import ConfigError, load_config

    overrides = list(getattr(args, "overrides", None) or [])
    try:
        if args.command == "quickstart":
            from mylm_jax.quickstart import quickstart_config

            quickstart_config(args.out, overrides)
        elif getattr(args, "continue_dir", None) or command_path(args) == ("checkpoint", "set-config"):
            load_config(None, overrides)  # applied to the run's stored config: the keys and values must be real
        elif hasattr(args, "config"):
            load_config(args.config, overrides)
        if getattr(args, "clean", None):
            from mylm_jax.data.clean import Cleaner

            Cleaner(args.clean, getattr(args, "seed", 0) or 0)
    except Exception as e:  # noqa: BLE001 (ConfigError, DataError: either is the doc's mistake)
        if expected_error is None or not isinstance(e, ConfigError):
            fail(example, f"its config does not validate: {type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A directory holding tok.json, a small tokenizer, for the tokenizer commands to run against."""
    from mylm_jax.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("doc_commands")
    text = "Hello, world. To be, or not to be, that is the question.\n" * 20 + "春眠不觉晓，处处闻啼鸟。\n"
    train_tokenizer([text], vocab_size=300).save(str(d / "tok.json"))
    # docs/data.md's --on-error fail example: line 2 is not JSON
    (d / "bad.jsonl").write_text('{"text": "To be, or not to be"}\n{text: "that is the question"}\n')
    return d


def run_mylm(example: Example, argv: list[str], cwd: Path, monkeypatch, capsys) -> None:
    from mylm_jax.cli import main

    expected = next((line for line in example.output if line.startswith("mylm: error:")), None)
    monkeypatch.chdir(cwd)
    for name in ("configs",):  # relative config paths keep working from the temporary directory
        if (ROOT / name).is_dir() and not (cwd / name).exists():
            (cwd / name).symlink_to(ROOT / name)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    if expected is not None:
        if rc != 2 or expected not in err:
            fail(example, f"expected {expected!r} (exit 2), got exit {rc}: {err.strip() or out.strip()[-300:]}")
    elif rc != 0:
        fail(example, f"exit {rc}: {err.strip()[-500:]}")


def check_mylm(example: Example, monkeypatch, capsys, tokenizer_dir: Path) -> str:
    """How it was checked: "run" or "parse+validate"."""
    argv = example.argv[1:]
    expected_error = next((line for line in example.output if line.startswith("mylm: error:")), None)
    check_paths(example, argv)
    argv = [PLACEHOLDER_VALUE if PLACEHOLDER.match(token) else token for token in argv]
    args = parse_mylm(example, argv)
    if args is None:  # --help printed: run it for real
        run_mylm(example, argv, ROOT, monkeypatch, capsys)
        return "run"
    validate_config(example, args, expected_error)
    path = command_path(args)
    here = tokenizer_dir
    if path == ("data", "prepare") and all((here / p).is_file() for p in [*args.inputs, args.tokenizer]):
        run_mylm(example, argv, here, monkeypatch, capsys)  # inputs made in the temporary directory: cheap
        return "run"
    if path not in QUICK:
        return "parse+validate"
    if path == ("tokenizer", "decode"):
        from mylm_jax.tokenizer import Tokenizer

        size = Tokenizer.load(str(tokenizer_dir / "tok.json")).vocab_size
        if any(int(i) >= size for i in args.ids):
            return "parse+validate"  # ids of a real tokenizer: out of the small one's range
    if path[0] == "tokenizer" and args.tokenizer != "tok.json":
        return "parse+validate"
    run_mylm(example, argv, tokenizer_dir if path[0] == "tokenizer" else ROOT, monkeypatch, capsys)
    return "run"


@functools.lru_cache(maxsize=None)
def script_help(script: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def check_script(example: Example) -> str:
    script = example.argv[1]
    check_paths(example, example.argv[1:])
    rc, text = script_help(script)
    if rc != 0:
        fail(example, f"`python {script} --help` exits {rc}: {text.strip()[-500:]}")
    known = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", text))
    for token in example.argv[2:]:
        flag = token.split("=", 1)[0]
        if flag.startswith("-") and flag not in known:
            fail(example, f"{flag}: not an option of {script} (its --help lists {', '.join(sorted(known))})")
    overrides = [t for t in example.argv[2:] if re.match(r"^[a-z_]+\.[a-z_0-9]+=", t)]
    if overrides:
        from mylm_jax.config import ConfigError, load_config

        config = None
        if "--config" in example.argv:
            config = example.argv[example.argv.index("--config") + 1]
        try:
            load_config(config, overrides)
        except ConfigError as e:
            fail(example, f"its overrides do not validate: {e}")
    return "help-flags"


def check_module(example: Example) -> str:
    module = example.argv[2]
    if importlib.util.find_spec(module) is None:
        fail(example, f"no module named {module}")
    check_paths(example, example.argv[3:])
    if module == "pytest":
        for token in example.argv[3:]:
            if re.match(r"^(tests|parity_tests)(/|$)", token) and not (ROOT / token.split("::")[0]).exists():
                fail(example, f"{token}: no such test file")
    return "exists"


def check_bash(example: Example) -> str:
    script = example.argv[1]
    if not (ROOT / script).is_file():
        fail(example, f"{script}: no such script")
    r = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        fail(example, f"bash -n {script}: {r.stderr.strip()}")
    return "syntax"


def check_pip(example: Example) -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for token in example.argv[2:]:
        m = re.fullmatch(r"\.?\[([^\]]*)\]", token)
        if m:
            for name in filter(None, (n.strip() for n in m.group(1).split(","))):
                if name not in extras:
                    fail(example, f"extra {name!r} is not in pyproject.toml (it has {', '.join(extras)})")
    return "extras"


def check(example: Example, monkeypatch, capsys, tokenizer_dir: Path) -> str:
    head = example.argv[0]
    if head == "<unsplittable>":
        fail(example, f"not a shell command line: {example.argv[1]}")
    if head == "mylm":
        return check_mylm(example, monkeypatch, capsys, tokenizer_dir)
    if head == "python" and example.argv[1].startswith("scripts/"):
        return check_script(example)
    if head == "python":
        return check_module(example)
    if head == "bash":
        return check_bash(example)
    return check_pip(example)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"{e.doc}:{e.line}:{e.argv[0]}" for e in EXAMPLES])
def test_doc_command(example: Example, monkeypatch, capsys, tokenizer_dir):
    how = check(example, monkeypatch, capsys, tokenizer_dir)
    with capsys.disabled():
        if "-v" in sys.argv or "--verbose" in sys.argv:
            print(f" [{how}]", end="")


# -- commands named in the prose ----------------------------------------------------------------------

INLINE = re.compile(r"`(mylm [^`]*|python scripts/[^`]*|python -m [^`]*|bash scripts/[^`]*|pip install [^`]*)`")


def inline_mentions(path: Path) -> list[Example]:
    """`mylm ...` (and script, module, pip) commands written inline in the prose, outside code blocks."""
    doc = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            fenced = not fenced
        if not fenced:
            out += [Example(doc, number, m.group(1), m.group(1).split()) for m in INLINE.finditer(line)]
    return out


def _subparsers(parser):
    import argparse

    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def mention_problem(example: Example) -> str | None:
    """What is wrong with an inline mention: a command that does not exist, a flag its command lacks,
    a missing script or test file, an unknown extra. Placeholders and `a / b` alternatives are allowed."""
    words = example.argv
    if words[0] != "mylm":
        if words[0] == "pip":
            extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            for m in re.finditer(r"\[([^\]]*)\]", example.text):
                unknown = [n for n in m.group(1).split(",") if n.strip() and n.strip() not in extras]
                if unknown:
                    return f"extra(s) {unknown} not in pyproject.toml"
            return None
        for token in words[1:]:
            if CHECKED_PATH.match(token) and not (ROOT / token.split("::")[0]).exists():
                return f"{token}: no such file"
        if words[0] == "python" and words[1].startswith("scripts/"):
            rc, text = script_help(words[1])
            known = set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", text))
            bad = [t for t in words[2:] if t.startswith("--") and t.split("=")[0] not in known]
            return f"{bad}: not options of {words[1]}" if bad else None
        return None
    parser, level = mylm_parser(), None  # level: the parser whose subcommand the last word chose
    for i, raw in enumerate(words[1:], 1):
        token = raw.strip("[]().,")
        if raw == "|" and i + 1 < len(words) and not words[i + 1].startswith("-"):
            break  # `mylm ... | head`: a pipe (`--data DIR | --text FILE`: alternatives)
        if token in ("", "...", "|", "/"):
            continue
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag not in parser._option_string_actions:
                return f"{flag}: not an option of `{parser.prog}`"
            continue
        sub = _subparsers(parser)
        if level is not None and words[i - 1] == "/":  # `train / encode / decode`: the alternatives
            if token not in _subparsers(level).choices:
                return f"{token!r}: not a command of `{level.prog}` ({', '.join(_subparsers(level).choices)})"
            parser = _subparsers(level).choices[token]
        elif sub is not None:
            if token not in sub.choices:
                return f"{token!r}: not a command of `{parser.prog}` ({', '.join(sub.choices)})"
            level, parser = parser, sub.choices[token]
    return None


MENTIONS = {path: inline_mentions(path) for path in doc_files()}


@pytest.mark.parametrize("path", [p for p in MENTIONS if MENTIONS[p]], ids=lambda p: str(p.relative_to(ROOT)))
def test_inline_mentions(path):
    """Each command named inline in a page (`mylm checkpoint show --weights`) exists, with its flags."""
    problems = [f"{e}\n    {problem}" for e in MENTIONS[path] if (problem := mention_problem(e))]
    assert not problems, "\n".join(problems)


STALE = """\
```console
$ mylm frobnicate --config configs/quickstart.yaml
$ mylm pretrain --config configs/quickstart.yaml --no-such-flag
$ mylm config --config configs/quickstart.yaml model.no_such_key=1
$ mylm config --config configs/no_such_config.yaml
$ mylm config --config configs/gpt2_tiny.yaml model.n_heads=5
mylm: error: a message the command no longer prints
$ mylm tokenizer inspect --tokenizer tok.json --no-such-flag
$ python scripts/bench_model.py --no-such-flag
$ python -m pytest tests/test_no_such_file.py
$ bash scripts/no_such_script.sh
$ pip install -e ".[no_such_extra]"
```
"""


def test_a_stale_example_fails(tmp_path, monkeypatch, capsys, tokenizer_dir):
    """The checks catch a removed command, a renamed flag, a bad key, a missing config file, a changed
    error message, a script's missing flag, a missing test file or script, an unknown extra."""
    page = tmp_path / "stale.md"
    page.write_text(STALE)
    examples = extract(page)
    assert len(examples) == 10
    for example in examples:
        with pytest.raises(pytest.fail.Exception, match=rf"stale.md:{example.line}: "):
            check(example, monkeypatch, capsys, tokenizer_dir)
    for text in ("mylm frobnicate", "mylm checkpoint show --no-such-flag", "mylm tokenizer train / frobnicate",
                 "python scripts/bench_model.py --no-such-flag", 'pip install -e ".[no_such_extra]"',
                 "python -m pytest tests/test_no_such_file.py"):
        assert mention_problem(Example("stale.md", 1, text, text.split())), text
    for text in ("mylm eval RUN_DIR --data DIR | --text FILE...", "mylm ... | head",
                 "mylm data prepare / clean / inspect", "mylm checkpoint show --weights"):
        assert mention_problem(Example("fresh.md", 1, text, text.split())) is None, text


def test_extraction_rules():
    """The extractor itself: continuations, console output, placeholders, `&&`, comments."""
    assert _drop_placeholders(["mylm", "x", "[--weights]", "[section.key=value", "...]", "[--a", "1]"]) \
        == ["mylm", "x", "--weights", "--a", "1"]
    assert _split_commands('pip install -e ".[torch]" && mylm quickstart  # a comment') \
        == [["pip", "install", "-e", ".[torch]"], ["mylm", "quickstart"]]
    block = [(1, "$ mylm config \\"), (2, "    --config c.yaml"), (3, "mylm: error: x"), (4, "$ mylm params")]
    assert _shell_lines("d", block, console=True) == [(1, "mylm config --config c.yaml", ["mylm: error: x"]),
                                                      (4, "mylm params", [])]
