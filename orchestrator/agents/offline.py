"""The offline model: deterministic, honestly labelled scaffolds built from the requirements, no network.

Long because it is one model that plays every role (analyst to documenter); each role's answer is a small
section below, and splitting them apart would scatter one model's vocabulary over six files.

It is a pydantic-ai FunctionModel, so its answers go through the same Agent, output validation and usage path
as a real model's. It derives names and text from the requirements and writes a small Python package that
really works, with pytest tests that really pass; its analysis, review and documentation say plainly that they
are the offline scaffold. Configuration `simulate_failing_test: true` makes its tester add a test that fails on
purpose, to show that failures are reported (and that the fix loop runs and cannot hide them).
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from orchestrator.models import TestReport
from orchestrator.outcome import classify_test_report

__all__ = ["OFFLINE_MODEL", "OFFLINE_NOTICE", "OfflineTask", "offline_model", "package_name"]

OFFLINE_MODEL = "offline"
OFFLINE_NOTICE = (
    "This is the offline scaffold: deterministic output derived from the requirements, not a language "
    "model's work. Configure a real model (openai:<model> or anthropic:<model>) for real results."
)
FAILING_TEST_KEY = "simulate_failing_test"

_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """a an the and or but if then else for to of in on at by with without from into onto as is are be been
    being was were will would shall should can could may might must do does did done have has had having it its
    this that these those there their them they we you your our us i me my he she his her not no yes all any
    each every some such more most less least very so than too also just only please build create make write
    implement develop design need needs needed want wants using use used via which who whom whose what when where
    why how simple small basic new given like able allow allows support supports provide provides including
    include includes etc application app program project system service tool python code function functions
    module library package manage manages managing handle handles handling track tracks tracking""",
    )
)
_RESERVED = frozenset({"test", "tests", "pytest", "conftest", "setup", "site", "main"})


@dataclass(frozen=True)
class OfflineTask:
    """Everything the offline model may look at for one request (a real model gets the same in its prompt)."""

    role: str
    kind: Literal["phase", "fix"]
    workflow_type: str
    requirements: str
    configuration: dict[str, Any]
    inputs: dict[str, dict[str, Any]]
    files: list[dict[str, Any]] = field(default_factory=list)
    test_files: list[dict[str, Any]] = field(default_factory=list)
    test_output: str = ""


def keywords(text: str) -> list[str]:
    seen: list[str] = []
    for word in re.findall(r"[a-z][a-z0-9]*", text.lower()):
        if len(word) >= 3 and word not in _STOPWORDS and word not in seen:
            seen.append(word)
    return seen


def package_name(requirements: str) -> str:
    """An importable package name from the requirements' first meaningful words, e.g. 'todo_items'."""
    name = "_".join(keywords(requirements)[:2]) or "project"
    name = name[:40].strip("_") or "project"
    if name in sys.stdlib_module_names or name in _RESERVED or keyword.iskeyword(name):
        name += "_app"
    return name


def _clean(text: str, limit: int = 200) -> str:
    """`text` on one line, limited, with only characters that are safe inside a Python docstring."""
    flat = re.sub(r"\s+", " ", text).strip()
    flat = re.sub(r"[^A-Za-z0-9 .,;:!?()'/+-]", " ", flat)
    flat = re.sub(r" {2,}", " ", flat).strip()
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


def first_sentence(text: str) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    sentence = re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0] if flat else "an unspecified project"
    return _clean(sentence.rstrip(".!?"), 160) or "an unspecified project"


def requirement_items(text: str, limit: int = 12) -> list[str]:
    """The requirements as separate statements: bullet or numbered lines, else sentences."""
    bullets = [
        re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line).strip()
        for line in text.splitlines()
        if re.match(r"^\s*(?:[-*+]|\d+[.)])\s+\S", line)
    ]
    items = bullets or [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]
    cleaned = [_clean(item.rstrip(".!?"), 200) for item in items]
    return [item for item in cleaned if item][:limit] or [first_sentence(text)]


def _failing_behaviour(configuration: dict[str, Any]) -> str:
    value = configuration.get("failing_behaviour") or configuration.get("failing_behavior")
    return str(value) if value else ""


def _title(package: str) -> str:
    return " ".join(word.capitalize() for word in package.split("_"))


def _language(configuration: dict[str, Any]) -> str:
    value = configuration.get("language")
    return value.strip().lower() if isinstance(value, str) and value.strip() else "python"


# --- analyst, architect -------------------------------------------------------------------------------------


def _analyst(task: OfflineTask) -> dict[str, Any]:
    items = requirement_items(task.requirements)
    language = _language(task.configuration)
    non_functional = [
        f"Written in {language}" + ("" if language == "python" else " (the offline scaffold writes Python only)"),
        "Behaviour is covered by automated pytest tests run in an isolated sandbox",
        "Needs no network access and no secrets at run time",
        "Invalid input is rejected with clear errors",
    ]
    return {
        "summary": f"Offline scaffold analysis of the request: {first_sentence(task.requirements)}. "
        f"The items below are the requirements restated, not a model's reading of them. {OFFLINE_NOTICE}",
        "functional_requirements": items,
        "non_functional_requirements": non_functional,
        "acceptance_criteria": [f"An automated test demonstrates: {item}" for item in items],
    }


def _architect(task: OfflineTask) -> dict[str, Any]:
    package = package_name(task.requirements)
    return {
        "overview": f"Offline scaffold design: a Python package `{package}` whose core module holds an in-memory "
        "record store and text helpers, tested with pytest. It is a deterministic starting point shaped by the "
        f"requirements' wording, not a design for them. {OFFLINE_NOTICE}",
        "components": [
            {"name": package, "responsibility": "Public API: re-exports the core and states the requirements."},
            {
                "name": f"{package}.core",
                "responsibility": "Record, RecordStore (add/get/remove/search), slugify, summarize.",
            },
            {"name": "tests", "responsibility": "pytest tests of the package, run in the sandbox."},
        ],
        "files": [f"{package}/__init__.py", f"{package}/core.py", f"tests/test_{package}.py"],
        "decisions": [
            "Standard library only, so the project runs anywhere with Python and pytest.",
            "A package importable from the project root: no src layout and no installation step.",
            "Offline scaffold: the same input always gives the same design.",
        ],
    }


# --- engineer ---------------------------------------------------------------------------------------------------

_CORE_TEMPLATE = '''"""Core of {package}: {summary}.

Offline scaffold: a small, working starting point named after the requirements (an in-memory record store
and text helpers). It does not implement the requirements; configure a real model for that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Record", "RecordStore", "slugify", "summarize"]

_WORD = re.compile(r"[a-z0-9]+")


def slugify(text: str) -> str:
    """Lower-case words joined by hyphens: 'Hello, World!' -> 'hello-world'."""
    return "-".join(_WORD.findall(text.lower()))


def summarize(text: str, max_words: int = 12) -> str:
    """The first `max_words` words of `text`, followed by '...' when it had more."""
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    return " ".join(words[:max_words]) + "..."


@dataclass(frozen=True)
class Record:
    """One stored record: an id, a title and normalised tags."""

    id: int
    title: str
    tags: tuple[str, ...] = ()


@dataclass
class RecordStore:
    """Keeps records in memory under increasing ids."""

    _records: dict[int, Record] = field(default_factory=dict)
    _next_id: int = 1

    def add(self, title: str, tags: tuple[str, ...] | list[str] = ()) -> Record:
        """Store a new record; the title must not be blank. Tags are slugified and deduplicated."""
        clean = title.strip()
        if not clean:
            raise ValueError("title must not be blank")
        record = Record(self._next_id, clean, tuple(sorted({{slugify(t) for t in tags if slugify(t)}})))
        self._records[record.id] = record
        self._next_id += 1
        return record

    def get(self, record_id: int) -> Record:
        """The record with `record_id`; KeyError when there is none."""
        try:
            return self._records[record_id]
        except KeyError:
            raise KeyError(f"no record with id {{record_id}}") from None

    def remove(self, record_id: int) -> Record:
        """Delete and return the record with `record_id`; KeyError when there is none."""
        record = self.get(record_id)
        del self._records[record_id]
        return record

    def all(self) -> list[Record]:
        """Every record, oldest first."""
        return [self._records[key] for key in sorted(self._records)]

    def search(self, text: str) -> list[Record]:
        """Records whose title contains `text` (any case) or that carry it as a tag."""
        needle = text.strip().lower()
        if not needle:
            return []
        return [r for r in self.all() if needle in r.title.lower() or slugify(needle) in r.tags]

    def __len__(self) -> int:
        return len(self._records)
'''

_INIT_TEMPLATE = '''"""{title}: {summary}.

Generated by the offline scaffold model: a deterministic starting point derived from the requirements, not
an implementation of them. Configure a real model for real results.
"""

from .core import Record, RecordStore, slugify, summarize

__all__ = ["REQUIREMENTS", "Record", "RecordStore", "slugify", "summarize"]

REQUIREMENTS = {requirements!r}
'''


def _package_files(requirements: str) -> list[dict[str, Any]]:
    package = package_name(requirements)
    summary = first_sentence(requirements)
    return [
        {
            "path": f"{package}/__init__.py",
            "language": "python",
            "content": _INIT_TEMPLATE.format(
                title=_title(package), summary=summary, requirements=_clean(requirements, 500)
            ),
        },
        {
            "path": f"{package}/core.py",
            "language": "python",
            "content": _CORE_TEMPLATE.format(package=package, summary=summary),
        },
    ]


def _engineer(task: OfflineTask) -> dict[str, Any]:
    if task.kind == "fix":
        failing = re.findall(r"^(?:FAILED|ERROR) (\S+)", task.test_output, flags=re.MULTILINE)
        listed = ", ".join(failing[:10]) or "see the test output"
        return {
            "files": task.files,
            "notes": "Offline scaffold: it cannot repair code, so the files are returned unchanged and the "
            f"failures remain ({listed}). Configure a real model to have failures fixed.",
        }
    if task.files:  # code to fix was given (workflow type bugfix)
        behaviour = _failing_behaviour(task.configuration)
        return {
            "files": task.files,
            "notes": "Offline scaffold: it cannot fix bugs, so the submitted code is returned unchanged. "
            f"Reported failing behaviour: {_clean(str(behaviour or 'not given'), 300)}. "
            "Configure a real model to have it fixed.",
        }
    language = _language(task.configuration)
    notes = (
        f"Offline scaffold: a small, working Python package named after the requirements "
        f"({package_name(task.requirements)}) with a record store and text helpers; it does not implement "
        "the requirements. Configure a real model for real code."
    )
    if language != "python":
        notes += f" The configuration asks for {language}; the offline scaffold writes Python only."
    return {"files": _package_files(task.requirements), "notes": notes}


# --- tester ------------------------------------------------------------------------------------------------------


def _module_names(files: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for item in files:
        path = str(item.get("path", ""))
        if not path.endswith(".py"):
            continue
        parts = path[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if (
            not parts
            or parts[0] in ("tests", "test")
            or parts[-1].startswith("test_")
            or parts[-1] in ("conftest", "setup", "__main__")
            or not all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)
        ):
            continue
        names.append(".".join(parts))
    return sorted(set(names))


def _scaffold_package(files: list[dict[str, Any]]) -> str | None:
    """The package name when `files` hold the offline engineer's package, else None."""
    for item in files:
        path, content = str(item.get("path", "")), str(item.get("content", ""))
        markers = ("class RecordStore", "def slugify", "def summarize")
        if path.endswith("/core.py") and path.count("/") == 1 and all(m in content for m in markers):
            return path.split("/")[0]
    return None


_PACKAGE_TESTS = """

def test_add_and_get_a_record():
    store = RecordStore()
    record = store.add("  Write the report ", tags=["Work", "urgent!"])
    assert record.id == 1
    assert record.title == "Write the report"
    assert record.tags == ("urgent", "work")
    assert store.get(1) == record
    assert len(store) == 1


def test_add_rejects_a_blank_title():
    with pytest.raises(ValueError):
        RecordStore().add("   ")


def test_ids_increase_and_all_is_oldest_first():
    store = RecordStore()
    first, second = store.add("first"), store.add("second")
    assert second.id == first.id + 1
    assert store.all() == [first, second]


def test_remove_and_missing_records():
    store = RecordStore()
    record = store.add("temporary")
    assert store.remove(record.id) == record
    with pytest.raises(KeyError):
        store.get(record.id)
    with pytest.raises(KeyError):
        store.remove(record.id)


def test_search_by_title_and_by_tag():
    store = RecordStore()
    report = store.add("Quarterly Report", tags=["finance"])
    store.add("Team lunch", tags=["social"])
    assert store.search("report") == [report]
    assert store.search("Finance") == [report]
    assert store.search("   ") == []


def test_slugify():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("  Many   spaces here ") == "many-spaces-here"
    assert slugify("!!!") == ""


def test_summarize():
    assert summarize("one two three", max_words=5) == "one two three"
    assert summarize("one two three four", max_words=2) == "one two..."
    with pytest.raises(ValueError):
        summarize("text", max_words=0)


def test_package_states_its_requirements():
    assert isinstance(REQUIREMENTS, str) and REQUIREMENTS
"""

_FAILING_TEST = '''

def test_deliberately_failing():
    """Fails on purpose (configuration simulate_failing_test): shows that a failing test is reported."""
    assert 1 + 1 == 3, "deliberately failing test requested with simulate_failing_test"
'''


def _tester(task: OfflineTask) -> dict[str, Any]:
    modules = _module_names(task.files)
    package = _scaffold_package(task.files)
    header = '"""Tests written by the offline scaffold model: imports of every module'
    header += " and the package's behaviour." if package else "."
    header += '"""\n\nimport importlib\n\nimport pytest\n'
    if package:
        header += f"\nfrom {package} import REQUIREMENTS, RecordStore, slugify, summarize\n"
    body = f"\nMODULES = {modules!r}\n"
    if modules:
        body += (
            '\n\n@pytest.mark.parametrize("name", MODULES)\n'
            "def test_module_imports(name):\n"
            "    importlib.import_module(name)\n"
        )
    else:
        paths = sorted(str(item.get("path", "")) for item in task.files)
        body += (
            f"\nPATHS = {paths!r}\n\n\n"
            "def test_project_files_are_present():\n"
            "    from pathlib import Path\n\n"
            "    root = Path(__file__).resolve().parents[1]\n"
            "    for path in PATHS:\n"
            "        assert (root / path).read_text().strip(), path\n"
        )
    if package:
        body += _PACKAGE_TESTS
    behaviour = _failing_behaviour(task.configuration)
    if behaviour:
        reason = f"offline scaffold cannot check the reported failing behaviour ({_clean(behaviour, 120)})"
        body += f"\n\ndef test_reported_failing_behaviour():\n    pytest.skip({reason!r})\n"
    if task.configuration.get(FAILING_TEST_KEY) is True:
        body += _FAILING_TEST
    name = f"tests/test_{package}.py" if package else "tests/test_project.py"
    notes = "Offline scaffold tests: " + (
        "module imports and the scaffold package's behaviour." if package else "module imports only."
    )
    if task.configuration.get(FAILING_TEST_KEY) is True:
        notes += " Includes test_deliberately_failing because simulate_failing_test is set."
    return {"test_files": [{"path": name, "language": "python", "content": header + body}], "notes": notes}


# --- reviewer -----------------------------------------------------------------------------------------------------


def _python_findings(path: str, content: str) -> list[dict[str, str]]:
    findings: list[dict[str, str]] = []
    try:
        tree = ast.parse(content, filename=path)
    except SyntaxError as exc:
        return [{"severity": "critical", "path": path, "message": f"syntax error at line {exc.lineno}: {exc.msg}"}]
    except (MemoryError, RecursionError):
        # CPython's parser gives up on deep nesting (thousands of unary operators or attribute accesses) this
        # way; the file is unreviewable, which is a finding, not a failure of the review.
        return [
            {
                "severity": "critical",
                "path": path,
                "message": "the Python parser cannot build this file (nesting too deep); it cannot run either",
            }
        ]
    if not ast.get_docstring(tree) and content.strip():
        findings.append({"severity": "minor", "path": path, "message": "no module docstring"})
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is None:
            findings.append({"severity": "major", "path": path, "message": f"bare 'except:' at line {node.lineno}"})
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            findings.append({"severity": "major", "path": path, "message": f"{node.func.id}() at line {node.lineno}"})
    long_lines = [n for n, line in enumerate(content.splitlines(), 1) if len(line) > 120]
    if long_lines:
        findings.append(
            {"severity": "minor", "path": path, "message": f"{len(long_lines)} line(s) over 120 characters"}
        )
    return findings


def _reviewer(task: OfflineTask) -> dict[str, Any]:
    findings: list[dict[str, str]] = [
        {
            "severity": "info",
            "path": "",
            "message": "Offline review: automated static checks only (syntax, docstrings, bare except, "
            "eval/exec, long lines, TODO markers, test results). Configure a real model for a real review.",
        }
    ]
    if not task.files:
        findings.append({"severity": "major", "path": "", "message": "there are no files to review"})
    for item in task.files:
        path, content = str(item.get("path", "")), str(item.get("content", ""))
        if path.endswith(".py"):
            findings.extend(_python_findings(path, content))
        if re.search(r"\b(TODO|FIXME|XXX)\b", content):
            findings.append({"severity": "info", "path": path, "message": "contains TODO/FIXME markers"})
    behaviour = _failing_behaviour(task.configuration)
    if behaviour:
        findings.append(
            {
                "severity": "major",
                "path": "",
                "message": "the offline scaffold cannot fix bugs, so the reported failing behaviour "
                f"({_clean(behaviour, 200)}) is not addressed",
            }
        )
    report = _test_report(task.inputs)
    if report is not None and not report.get("success", False):
        findings.append(
            {
                "severity": "major",
                "path": "",
                "message": f"the last sandbox test run did not succeed: {_outcome(report)}",
            }
        )
    blocking = [f for f in findings if f["severity"] in ("major", "critical")]
    approved = not blocking
    summary = (
        f"Offline static review of {len(task.files)} file(s): {len(findings) - 1} finding(s), "
        + ("none blocking." if approved else f"{len(blocking)} blocking (major or critical).")
        + " This is the offline scaffold's rule-based check, not a model's judgement."
    )
    return {"summary": summary, "approved": approved, "findings": findings}


# --- documenter -----------------------------------------------------------------------------------------------


def _outcome(report: dict[str, Any]) -> str:
    """The tests phase's own sentence ("3 of 10 generated tests failed", "tests did not run: ...")."""
    return str(report.get("summary") or classify_test_report(TestReport.model_validate(report)).message)


def _test_report(inputs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    for output in reversed(list(inputs.values())):
        report = output.get("report")
        if isinstance(report, dict):
            return report
    return None


def _documenter(task: OfflineTask) -> dict[str, Any]:
    package = _scaffold_package(task.files)
    title = _title(package) if package else _title(package_name(task.requirements))
    lines = [f"# {title}", "", f"> {OFFLINE_NOTICE}", ""]
    analysis = next((o for o in task.inputs.values() if "acceptance_criteria" in o), None)
    lines += [first_sentence(task.requirements) + ".", "", "## Requirements", ""]
    lines += [f"- {item}" for item in requirement_items(task.requirements)]
    if analysis is not None:
        lines += ["", "## Acceptance criteria", ""]
        lines += [f"- {item}" for item in analysis.get("acceptance_criteria", []) if isinstance(item, str)]
    design = next((o for o in task.inputs.values() if isinstance(o.get("overview"), str)), None)
    if design is not None:
        lines += ["", "## Design", "", str(design["overview"]), ""]
        for component in design.get("components", []):
            if isinstance(component, dict):
                lines.append(f"- **{component.get('name', '')}**: {component.get('responsibility', '')}")
    if task.files:
        lines += ["", "## Files", ""]
        for item in task.files:
            content = str(item.get("content", ""))
            described = f"{item.get('language', 'text')}, {len(content.splitlines())} lines"
            lines.append(f"- `{item.get('path', '')}` ({described})")
    lines += ["", "## Running the tests", "", "```sh", "python -m pytest -q", "```"]
    report = _test_report(task.inputs)
    if report is not None:
        counts = f"{report.get('passed', 0)} passed, {report.get('failed', 0)} failed, {report.get('errors', 0)} errors"
        lines += [
            "",
            "## Test results",
            "",
            f"Last sandbox run: {_outcome(report)} ({counts}, after {report.get('iterations', 1)} round(s)).",
        ]
    if package:
        lines += [
            "",
            "## Usage",
            "",
            "```python",
            f"from {package} import RecordStore, slugify",
            "",
            "store = RecordStore()",
            'record = store.add("Write the report", tags=["work"])',
            'assert store.search("report") == [record]',
            'assert slugify("Hello, World!") == "hello-world"',
            "```",
        ]
    return {"documentation": "\n".join(lines) + "\n"}


_BUILDERS = {
    "analyst": _analyst,
    "architect": _architect,
    "engineer": _engineer,
    "tester": _tester,
    "reviewer": _reviewer,
    "documenter": _documenter,
}


def offline_model(task: OfflineTask) -> FunctionModel:
    """The offline model answering `task`: one deterministic response in the requested output form."""
    data = _BUILDERS[task.role](task)

    async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if info.output_tools:
            return ModelResponse(parts=[ToolCallPart(info.output_tools[0].name, data)])
        return ModelResponse(parts=[TextPart(json.dumps(data))])

    return FunctionModel(respond, model_name=OFFLINE_MODEL)
