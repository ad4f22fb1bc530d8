"""What a phase hands its model: the files it works on, found generically in the inputs, and the prompt text."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from orchestrator.agents.errors import PhaseFailed
from orchestrator.agents.roles import CodeFile

__all__ = ["code_from_configuration", "fix_prompt", "latest_files", "phase_prompt", "report_in_inputs"]

_LANGUAGES = {
    ".py": "python",
    ".js": "javascript",
    ".ts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".rb": "ruby",
    ".c": "c",
    ".h": "c",
    ".cpp": "cpp",
    ".md": "markdown",
    ".toml": "toml",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".txt": "text",
}

_TASKS = {
    "analyst": "Analyse the requirements and return the specification.",
    "architect": "Design the solution and plan its files.",
    "engineer": "Write the complete source files (no tests).",
    "tester": "Write pytest tests for the source files below.",
    "reviewer": "Review the files below.",
    "documenter": "Write the project's documentation.",
}


def _language_of(path: str) -> str:
    dot = path.rfind(".")
    return _LANGUAGES.get(path[dot:].lower(), "text") if dot != -1 else "text"


def _is_file_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(f, dict) and isinstance(f.get("path"), str) and "content" in f for f in value)
    )


def latest_files(inputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest code files among the phase inputs: a tester's (final, possibly revised) else an engineer's."""
    tester: list[dict[str, Any]] | None = None
    engineer: list[dict[str, Any]] | None = None
    for output in inputs.values():
        files = output.get("files") if isinstance(output, dict) else None
        if not _is_file_list(files):
            continue  # e.g. the architect's "files" are planned paths, not code
        assert isinstance(files, list)
        if "test_files" in output or "report" in output:
            tester = files
        else:
            engineer = files
    chosen = tester if tester is not None else engineer
    return [dict(f) for f in chosen] if chosen else []


def report_in_inputs(inputs: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The tester's report among the inputs, if any."""
    for output in inputs.values():
        report = output.get("report") if isinstance(output, dict) else None
        if isinstance(report, dict):
            return report
    return None


def code_from_configuration(configuration: dict[str, Any]) -> list[dict[str, Any]]:
    """Configuration `code` (a mapping path -> content, a list of files, or one string) as validated files."""
    code = configuration.get("code")
    if code is None:
        return []
    raw: list[dict[str, Any]]
    if isinstance(code, str):
        raw = [{"path": "main.py", "content": code}]
    elif isinstance(code, dict):
        raw = [{"path": path, "content": content} for path, content in code.items()]
    elif isinstance(code, list):
        raw = [item if isinstance(item, dict) else {"path": None, "content": item} for item in code]
    else:
        raise PhaseFailed("configuration 'code' must be a mapping of path to content or a list of files")
    files: list[dict[str, Any]] = []
    for item in raw:
        item = dict(item)
        if isinstance(item.get("path"), str) and not item.get("language"):
            item["language"] = _language_of(item["path"])
        try:
            files.append(CodeFile.model_validate(item).model_dump())
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise PhaseFailed(f"configuration 'code' has an invalid file ({problems})") from None
    return files


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters omitted ...]"


def _without_file_contents(value: Any) -> Any:
    """The inputs with code replaced by paths: the code itself is shown once, in its own section."""
    if isinstance(value, dict):
        return {
            key: ([f.get("path") for f in item] if key in ("files", "test_files") and _is_file_list(item) else
                  _without_file_contents(item))
            for key, item in value.items()
        }  # fmt: skip
    if isinstance(value, list):
        return [_without_file_contents(item) for item in value]
    return value


def render_files(files: list[dict[str, Any]], limit: int) -> str:
    blocks: list[str] = []
    used = 0
    for item in files:
        block = f"### {item['path']}\n```{item.get('language') or ''}\n{item['content']}\n```"
        if used + len(block) > limit:
            blocks.append(f"[... {len(files) - len(blocks)} more file(s) omitted: the context limit was reached ...]")
            break
        blocks.append(block)
        used += len(block)
    return "\n\n".join(blocks) if blocks else "(none)"


def phase_prompt(
    *,
    role: str,
    phase: str,
    workflow_type: str,
    requirements: str,
    configuration: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
    files: list[dict[str, Any]],
    limit: int,
) -> str:
    """The user prompt of a phase: task, requirements, configuration, earlier outputs and the files at hand."""
    shown_config = {key: value for key, value in configuration.items() if key != "code"}
    task = _TASKS[role]
    if role == "engineer" and files:
        task = (
            "Fix the code below: find the cause of the failing behaviour and return the complete corrected "
            "source files."
        )
    sections = [
        f"# Task\n{task}\nThis is phase `{phase}` of a `{workflow_type}` workflow.",
        f"## Requirements\n{_clip(requirements.strip() or '(none given)', limit)}",
        "## Configuration\n```json\n"
        + _clip(json.dumps(shown_config, indent=2, sort_keys=True, default=str), limit // 4)
        + "\n```",
    ]
    behaviour = configuration.get("failing_behaviour") or configuration.get("failing_behavior")
    if behaviour:
        sections.append(f"## Failing behaviour\n{_clip(str(behaviour), limit // 4)}")
    if inputs:
        sections.append(
            "## Outputs of earlier phases\n```json\n"
            + _clip(json.dumps(_without_file_contents(inputs), indent=2, default=str), limit // 2)
            + "\n```"
        )
    if files:
        sections.append("## Files\n" + render_files(files, limit))
    return "\n\n".join(sections)


def fix_prompt(
    *,
    requirements: str,
    files: list[dict[str, Any]],
    test_files: list[dict[str, Any]],
    test_output: str,
    limit: int,
) -> str:
    """The engineer's prompt to revise code after a failing sandbox run."""
    return "\n\n".join(
        [
            "# Task\nThe tests below fail. Find the cause in the source files and return the complete corrected "
            "source files (all of them, not only the changed ones). Do not change the tests; if a test is "
            "wrong, keep the code and say so in `notes`.",
            f"## Requirements\n{_clip(requirements.strip() or '(none given)', limit // 4)}",
            "## Source files\n" + render_files(files, limit),
            "## Test files\n" + render_files(test_files, limit // 2),
            f"## Test run output\n```\n{_clip(test_output, limit // 4)}\n```",
        ]
    )
