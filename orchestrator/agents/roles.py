"""Agent roles: the structured output each role's model must return, and its system prompt file.

The phase output dicts keep these field names: the engine assembles the workflow result from them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ROLES",
    "AnalystOutput",
    "ArchitectOutput",
    "CodeFile",
    "Component",
    "DocumenterOutput",
    "EngineerOutput",
    "Finding",
    "ReviewerOutput",
    "RoleSpec",
    "TestReportOutput",
    "TestSuiteOutput",
    "TesterOutput",
    "load_prompt",
]


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CodeFile(_Out):
    """One source or test file."""

    path: str = Field(description="Relative POSIX path inside the project, e.g. 'todo/core.py'.")
    language: str = Field(default="python", description="Programming language, e.g. 'python'.")
    content: str = Field(description="The complete file content.")

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        path = PurePosixPath(value.strip())
        if (
            not value.strip()
            or path.is_absolute()
            or "\\" in value
            or any(part in ("", ".", "..") for part in path.parts)
        ):
            raise ValueError("must be a relative POSIX path inside the project, without '..'")
        return str(path)


class AnalystOutput(_Out):
    summary: str = Field(description="What is to be built, in two or three sentences.")
    functional_requirements: list[str] = Field(min_length=1, description="What the software must do.")
    non_functional_requirements: list[str] = Field(description="Qualities: performance, security, style.")
    acceptance_criteria: list[str] = Field(min_length=1, description="Checkable statements of done.")


class Component(_Out):
    name: str
    responsibility: str


class ArchitectOutput(_Out):
    overview: str = Field(description="The design in a paragraph.")
    components: list[Component] = Field(min_length=1)
    files: list[str] = Field(min_length=1, description="Relative paths of the files to write.")
    decisions: list[str] = Field(description="Design decisions and why.")


class EngineerOutput(_Out):
    files: list[CodeFile] = Field(min_length=1, description="Complete source files (no tests).")
    notes: str = Field(default="", description="What was done and anything left open.")


class TestSuiteOutput(_Out):
    """What the tester's model returns: the tests; the runner runs them."""

    __test__ = False

    test_files: list[CodeFile] = Field(min_length=1, description="pytest test files, e.g. 'tests/test_x.py'.")
    notes: str = Field(default="")


class TestReportOutput(_Out):
    __test__ = False

    passed: int
    failed: int
    errors: int
    success: bool
    output: str
    iterations: int
    # Empty when the tests ran; else why not (collection or usage error, nothing collected, no test runner).
    not_run_reason: str = ""
    # One plain line for people: "12 generated tests passed", "3 of 10 generated tests failed",
    # "tests did not run: ..." (orchestrator.outcome).
    summary: str = ""


class TesterOutput(_Out):
    """The tester phase's output: final code (possibly revised), its tests, the last sandbox run."""

    __test__ = False

    files: list[CodeFile]
    test_files: list[CodeFile]
    report: TestReportOutput


class Finding(_Out):
    severity: Literal["info", "minor", "major", "critical"]
    path: str = Field(default="", description="The file concerned; empty for the whole project.")
    message: str


class ReviewerOutput(_Out):
    summary: str
    approved: bool = Field(description="Whether you would merge the code as it is.")
    findings: list[Finding]


class DocumenterOutput(_Out):
    documentation: str = Field(description="Markdown documentation of the project.")


@dataclass(frozen=True)
class RoleSpec:
    name: str
    # What the role's model returns; the tester's phase output (TesterOutput) is assembled by the runner.
    model_output: type[BaseModel]
    phase_output: type[BaseModel]


ROLES: dict[str, RoleSpec] = {
    "analyst": RoleSpec("analyst", AnalystOutput, AnalystOutput),
    "architect": RoleSpec("architect", ArchitectOutput, ArchitectOutput),
    "engineer": RoleSpec("engineer", EngineerOutput, EngineerOutput),
    "tester": RoleSpec("tester", TestSuiteOutput, TesterOutput),
    "reviewer": RoleSpec("reviewer", ReviewerOutput, ReviewerOutput),
    "documenter": RoleSpec("documenter", DocumenterOutput, DocumenterOutput),
}


@functools.cache
def load_prompt(role: str) -> str:
    """The system prompt of `role`, from `prompts/<role>.md` shipped with the package."""
    return resources.files("orchestrator.agents").joinpath("prompts", f"{role}.md").read_text(encoding="utf-8")
