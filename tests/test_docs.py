"""Every path, module, command and link that README.md and docs/*.md name exists.

No server, no network, no subprocess: the files are read and the client's parser is
imported. What is checked, by rule:

(a) Paths. The targets of markdown links, and every word of an inline code span
    (`...`, outside fenced blocks and not a link's text; a word stripped of
    surrounding quotes, brackets and punctuation; of ``NAME=VALUE`` the value). A
    word is a path when it contains '/' or ends in one of ``EXTENSIONS``. Not
    checked: URLs and anything with ':' (``s3://``, ``dns:///``, ``host:port``),
    absolute paths (``/dev/shm``, ``/v2/health/ready``: the machine's, not the
    tree's), globs and placeholders (a word with any of ``* ? { } < > [ ] | $`` or
    ``...``, or a component written in capitals such as DIR, OUT.checkpoints,
    NAME.toml; a file at the top of the tree such as README.md is checked), and
    generated outputs (a first component in ``GENERATED``: build/, models/,
    model_repository/, .venv/). Fenced code blocks are commands and examples (a new
    pipeline spec to write): their paths are not checked, their modules and flags
    are ((b), (c)). Then:
    - a path whose first component is a top-level entry of the tree must exist there;
    - a path whose first component is an installed package must exist inside it;
    - another path with '/' is relative to a folder the text names: with an
      extension (``launcher/harness.py``, ``monitoring/prometheus-rule.yaml``) it must
      be the tail of a path in the tree; without one (``overlays/cpu``,
      ``encoder/1/``, ``autoscaling/v2``, an image name) it is not checked;
    - a bare file name with one of ``BARE_EXTENSIONS`` must be the name of a file in
      the tree (a bare ``tokenizer.json`` or ``export_info.json`` is a generated model
      file, not checked);
    - ``FILE::name`` (a pytest node id) also needs ``def name`` in FILE, and a code
      span that is a bare ``test_name`` a test function of that name under tests/.
(b) Modules. Every ``python -m X`` (prose, code spans and fenced blocks) resolves:
    a project module to ``X.py`` or ``X/__main__.py`` in the tree, anything else
    (pytest, pip) to an installed module (importlib.util.find_spec).
(c) Flags. A command is a fenced-block line (``\\`` continuations joined) or a code
    span holding ``python -m X ...`` or ``script/serve ...`` (the launcher's flags).
    Every ``-f`` / ``--flag`` after the module, up to a lone ``--`` (what follows goes
    to tritonserver), must be an option of X: for ``python -m client`` its subcommand
    must exist in client.cli.build_parser() and the flag must be an option of that
    subcommand; for other project modules, an option string given to
    ``add_argument`` in the module's file (read with ast, not imported; for a
    ``__main__.py`` that defines none, in the project modules it imports). Quoted
    text is not read for flags. In docs/client.md, the page of the command line,
    every ``--flag`` code span must also be an option of some client subcommand.
(d) Links. Every relative markdown link resolves to a file or folder of the tree,
    and a ``#anchor`` into a markdown file to one of its headings (GitHub's slugs).

All problems are reported at once, each with its file, line and text.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLIENT_DOC = ROOT / "docs" / "client.md"

EXTENSIONS = (".py", ".toml", ".pbtxt", ".md", ".yaml", ".yml", ".json", ".sh", ".txt", ".in", ".png", ".cfg")
BARE_EXTENSIONS = (".py", ".toml", ".pbtxt", ".md", ".yaml", ".yml", ".sh", ".in")
GENERATED = {"build", "models", "model_repository", ".venv"}
PRUNE = GENERATED | {".git", "__pycache__", ".pytest_cache", "node_modules"}
PLACEHOLDER_CHARS = set("*?{}<>[]|$")
LEAD, TRAIL = "\"'`([{", "\"'`)]}.,;:!"

PYTHON_M = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*\w)")
SCRIPT_SERVE = re.compile(r"(?<![\w/.-])script/serve\b")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"`([^`]+)`")
FENCE = re.compile(r"^ {0,3}(```|~~~)")


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text!r}: {self.why}"


@dataclass(frozen=True)
class Doc:
    """A markdown file cut into fenced lines, code spans and links, each with its line number."""

    path: Path
    text: str
    fenced: list[tuple[int, str]]  # logical lines of fenced blocks (continuations joined)
    spans: list[tuple[int, str]]  # inline code spans, newlines as spaces
    links: list[tuple[int, str]]  # markdown link targets outside code

    @classmethod
    def read(cls, path: Path, text: str | None = None) -> Doc:
        text = path.read_text(encoding="utf-8") if text is None else text
        prose_lines, fenced, in_fence, pending = [], [], None, None
        for number, line in enumerate(text.split("\n"), start=1):
            fence = FENCE.match(line)
            if in_fence is None and fence:
                in_fence = fence.group(1)
                prose_lines.append("")
                continue
            if in_fence is not None:
                prose_lines.append("")
                if line.strip().startswith(in_fence):
                    in_fence, pending = None, None
                    continue
                pending = (pending[0], pending[1] + " " + line.strip()) if pending else (number, line)
                if pending[1].rstrip().endswith("\\"):
                    pending = (pending[0], pending[1].rstrip()[:-1])
                else:
                    fenced.append(pending)
                    pending = None
                continue
            prose_lines.append(line)
        prose = "\n".join(prose_lines)
        # Links are found with code spans masked (a link written inside one is code); a code
        # span that is a link's text is checked through the link's target.
        masked = SPAN.sub(lambda m: "x" * len(m.group(0)), prose)
        found = list(LINK.finditer(masked))
        links = [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in found]
        spans = []
        for match in SPAN.finditer(prose):
            in_link_text = any(link.start() < match.start() < link.start(1) for link in found)
            if "\n\n" not in match.group(1) and not in_link_text:
                spans.append((prose.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
        return cls(path, text, fenced, spans, links)

    def line_of(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1


# The tree --------------------------------------------------------------------------------


@cache
def tree() -> tuple[frozenset[str], frozenset[str]]:
    """Relative paths (files and folders) of the tree, generated outputs left out; and file names."""
    paths, names = set(), set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in PRUNE and not (folder == str(ROOT) and d.startswith("."))]
        rel = Path(folder).relative_to(ROOT)
        for name in dirs + files:
            paths.add((rel / name).as_posix())
        names.update(files)
    return frozenset(paths), frozenset(names)


@cache
def top_level() -> frozenset[str]:
    return frozenset(p for p in tree()[0] if "/" not in p)


@cache
def defined_tests() -> frozenset[str]:
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        names.update(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return frozenset(names)


def _is_placeholder(word: str) -> bool:
    if PLACEHOLDER_CHARS & set(word) or "..." in word or "\u2026" in word:
        return True
    parts = word.strip("/").split("/")
    for i, part in enumerate(parts):
        stem, _, ext = part.partition(".")
        capitals = re.fullmatch(r"[A-Z][A-Z0-9_-]*", stem)
        # README.md: a file at the top of the tree is written in capitals too
        if capitals and not (i == 0 and ext and "." + ext in EXTENSIONS):
            return True
    return False


def path_problem(word: str) -> str | None:
    """Why ``word`` (one word of a code span, or a link's target) names no path of the tree; None if fine."""
    word = word.lstrip(LEAD)
    word = word if word.endswith("/") else word.rstrip(TRAIL)
    if "=" in word:
        word = word.rsplit("=", 1)[1]
    node = None
    if "::" in word:
        word, node = word.split("::", 1)
    if not word or word.startswith(("-", "/", "~")) or ":" in word or _is_placeholder(word):
        return None
    if "/" not in word and not word.endswith(EXTENSIONS):
        return None
    parts = word.strip("/").split("/")
    if parts[0] in GENERATED or parts[0] in (".", ".."):
        return None
    paths, names = tree()
    clean = "/".join(parts)
    if parts[0] in top_level():
        if not (ROOT / clean).exists():
            return "no such path in the tree"
        if node and not re.search(rf"^\s*(?:async\s+)?def {re.escape(node.split('[')[0])}\b",
                                  (ROOT / clean).read_text(encoding="utf-8"), re.M):
            return f"no test {node} in {clean}"
        return None
    if "/" in clean:
        spec = _find_spec(parts[0])
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                if (Path(location) / "/".join(parts[1:])).exists():
                    return None
            return f"not inside the installed package {parts[0]}"
        if not clean.endswith(EXTENSIONS) or any(p.endswith("/" + clean) for p in paths):
            return None
        return "no path in the tree ends with it"
    if clean.endswith(BARE_EXTENSIONS) and clean not in names:
        return "no file of that name in the tree"
    return None


def _find_spec(name: str):
    """The installed top-level package ``name`` (milvus_lite), or None."""
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        return None
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


# Modules and their options --------------------------------------------------------------


def module_file(module: str) -> Path | None:
    """The file ``python -m module`` runs, if ``module`` is the project's; None otherwise."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_project(module: str) -> bool:
    top = module.split(".")[0]
    return (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file()


def module_problem(module: str) -> str | None:
    if is_project(module):
        return None if module_file(module) else f"no {module.replace('.', '/')}.py or {module.replace('.', '/')}/__main__.py"
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    return None if found else "not a module of the tree nor an installed one"


def _add_argument_options(path: Path) -> set[str]:
    options = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("-"):
                    options.add(arg.value)
                    for kw in node.keywords:
                        if kw.arg == "action" and isinstance(kw.value, ast.Attribute) \
                                and kw.value.attr == "BooleanOptionalAction" and arg.value.startswith("--"):
                            options.add("--no-" + arg.value[2:])
    return options


def _imported_project_files(path: Path) -> list[Path]:
    files = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if is_project(name) and (found := module_file(name)):
                files.append(found)
    return files


@cache
def module_options(module: str) -> frozenset[str] | None:
    """Option strings of a project module's argparse parser(s), read from its source; None if it has none."""
    path = module_file(module)
    if path is None:
        return None
    options = _add_argument_options(path)
    if not options and path.name == "__main__.py":
        for other in _imported_project_files(path):
            options |= _add_argument_options(other)
    return frozenset(options | {"-h", "--help"}) if options else None


@cache
def client_parser() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """The client's top-level options and each subcommand's, from client.cli.build_parser()."""
    from client.cli import build_parser

    parser = build_parser()
    subcommands = {}  # argparse keeps subparsers and option strings in private fields only
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                subcommands[name] = frozenset(sub._option_string_actions)
    return frozenset(parser._option_string_actions), subcommands


def _words(args: str) -> list[str]:
    args = re.sub(r"\"[^\"]*\"|'[^']*'", " ", args)
    return [w.strip("[](),;`") for w in args.split()]


def command_problems(module: str, args: str) -> list[str]:
    """Why the options ``args`` given to ``python -m module`` are not its own (empty when they are)."""
    words = _words(args)
    if "--" in words:
        words = words[:words.index("--")]
    flags = [w.split("=", 1)[0] for w in words if w.startswith("-") and FLAG.match(w.split("=", 1)[0])]
    if module == "client":
        top, subcommands = client_parser()
        first = next((w for w in words if w), "")
        if first and not first.startswith("-") and first not in ("...", "\u2026"):
            if first not in subcommands:
                return [f"python -m client has no subcommand {first!r} (it has {', '.join(sorted(subcommands))})"]
            known, where = subcommands[first], f"python -m client {first}"
        else:
            known, where = top, "python -m client"
    else:
        known = module_options(module)
        if known is None:
            return []
        where = f"python -m {module}"
    return [f"{where} has no option {flag}" for flag in flags if flag not in known]


# The checks ------------------------------------------------------------------------------


def _commands(doc: Doc) -> list[tuple[int, str, str, str]]:
    """(line, module, the words after it, the command as written) for each command in fenced
    lines and code spans."""
    commands = []
    for line, text in doc.fenced + doc.spans:
        for match in PYTHON_M.finditer(text):
            rest = text[match.end():]
            following = PYTHON_M.search(rest)
            rest = rest[:following.start()] if following else rest
            commands.append((line, match.group(1), rest, (match.group(0) + rest).strip()))
        for match in SCRIPT_SERVE.finditer(text):
            commands.append((line, "splade_triton.launcher", text[match.end():], text[match.start():].strip()))
    return commands


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(text: str) -> frozenset[str]:
    """The anchors of a markdown text's headings."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = None
    for line in text.split("\n"):
        fence = FENCE.match(line)
        if fence:
            in_fence = None if in_fence else fence.group(1)
            continue
        if in_fence is None and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def link_problem(doc: Doc, target: str) -> str | None:
    if re.match(r"[a-z][a-z0-9+.-]*:", target):
        return None
    path_part, _, anchor = target.partition("#")
    if not path_part:
        return None if not anchor or anchor in anchors(doc.text) else f"no heading #{anchor} in this file"
    resolved = (doc.path.parent / path_part).resolve()
    try:
        resolved.relative_to(ROOT)
    except ValueError:
        return "points outside the repository"
    if not resolved.exists():
        return "no such file or folder"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
        return f"no heading #{anchor} in {resolved.relative_to(ROOT)}"
    return None


def problems_in(doc: Doc) -> list[Problem]:
    problems = []
    for line, span in doc.spans:
        for word in span.split():
            if why := path_problem(word):
                problems.append(Problem(doc.path, line, word, why))
        if re.fullmatch(r"test_\w+", span) and span not in defined_tests():
            problems.append(Problem(doc.path, line, span, "no test function of that name under tests/"))
        if doc.path == CLIENT_DOC and span.startswith("--"):
            flag = span.split()[0].split("=")[0]
            if FLAG.match(flag) and not any(flag in options for options in client_parser()[1].values()):
                problems.append(Problem(doc.path, line, span, f"no client subcommand has the option {flag}"))
    for line, target in doc.links:
        if why := link_problem(doc, target):
            problems.append(Problem(doc.path, line, target, why))
    for match in PYTHON_M.finditer(doc.text):
        if why := module_problem(match.group(1)):
            problems.append(Problem(doc.path, doc.line_of(match.start()), match.group(0), why))
    for line, module, args, written in _commands(doc):
        if is_project(module) and module_file(module):
            for why in command_problems(module, args):
                problems.append(Problem(doc.path, line, written, why))
    return problems


def _report(problems: list[Problem]) -> str:
    return f"{len(problems)} name(s) in the docs that do not exist:\n" + "\n".join(map(str, problems))


def test_docs_name_only_what_exists():
    problems = [p for path in DOC_FILES for p in problems_in(Doc.read(path))]
    assert not problems, _report(problems)


def test_the_checker_finds_what_is_missing():
    """The checker fails on a page naming things that do not exist, each reported, and nothing else."""
    page = "\n".join([
        "# Page",
        "Serve with `script/serve --host 0.0.0.0 --no-such-serve-flag`; see `templates/splade/nosuch.pbtxt`",
        "and `launcher/no_such_module.py`, [gone](no-such-page.md), [here](#page), [there](#nowhere),",
        "`tests/test_docs.py::test_no_such_test`, `test_no_such_test_either`, `nothing_here.toml`.",
        "```bash",
        "python -m client embed --no-such-flag \\",
        "    --top-k 3 \"--quoted-is-text\"",
        "python -m client frobnicate --url grpc://x:1",
        ".venv/bin/python -m export.no_such_tool --x",
        "python -m no_such_installed_module",
        "python -m splade_triton.launcher --grace-period 1 --bogus -- --tritonserver-flag",
        "```",
        "Fine: `tests/test_docs.py`, `build/anything`, `/dev/shm`, `<name>/1`, `OUT.checkpoints/`, `README.md`,",
        "`splade_triton/launcher/serve.py`, `overlays/cpu`, `model.py`, `tests/test_docs.py::test_docs_name_only_what_exists`,",
        "`python -m client encode --input x --output y --format tei`, [docs](../README.md#two-commands).",
    ])
    found = problems_in(Doc.read(ROOT / "docs" / "scratch.md", page))
    expected = [
        ("templates/splade/nosuch.pbtxt", "no such path in the tree"),
        ("launcher/no_such_module.py", "no path in the tree ends with it"),
        ("no-such-page.md", "no such file or folder"),
        ("#nowhere", "no heading #nowhere"),
        ("tests/test_docs.py::test_no_such_test", "no test test_no_such_test in tests/test_docs.py"),
        ("test_no_such_test_either", "no test function of that name"),
        ("nothing_here.toml", "no file of that name"),
        ("--no-such-flag", "python -m client embed has no option --no-such-flag"),
        ("frobnicate", "python -m client has no subcommand 'frobnicate'"),
        ("export.no_such_tool", "no export/no_such_tool.py or export/no_such_tool/__main__.py"),
        ("no_such_installed_module", "not a module of the tree nor an installed one"),
        ("--bogus", "python -m splade_triton.launcher has no option --bogus"),
        ("--no-such-serve-flag", "python -m splade_triton.launcher has no option --no-such-serve-flag"),
    ]
    unmatched = list(found)
    for text, why in expected:
        match = next((p for p in unmatched if text in p.text and why in p.why), None)
        assert match, f"not reported: {text!r} ({why})\n" + _report(found)
        unmatched.remove(match)
    assert not unmatched, "reported but fine:\n" + "\n".join(map(str, unmatched))
