"""The API Development Guide's own models (../shared/seed/), as its clients hold them: `api/models.py` (Step 1 of
"Adding New Endpoints") and `ErrorResponse` from `api/errors.py` ("Standard Error Response").

Verbatim but for one change the guide's code needs to run at all: its `Dict[str, any]` names the builtin function
`any`, which pydantic 2 refuses as a type, so it is `typing.Any` here (imported beside the guide's own names).
The guide's layout is kept as it is (whitespace-only lines, `typing` aliases), hence the file-wide noqa.
"""
# ruff: noqa: W293, UP006, UP035, UP045, I001
# the guide's layout, kept as it is, so `ruff format` leaves it alone:
# fmt: off

from pydantic import BaseModel, Field
from typing import Any, Optional, List, Dict
from datetime import datetime

class CustomWorkflowRequest(BaseModel):
    """Request model for custom workflow"""
    requirements: str = Field(..., description="Task requirements")
    workflow_type: str = Field(..., description="Type of workflow to execute")
    configuration: Optional[Dict[str, Any]] = Field(default_factory=dict)
    priority: Optional[str] = Field(default="normal", pattern="^(low|normal|high|critical)$")
    
class CustomWorkflowResponse(BaseModel):
    """Response model for custom workflow"""
    session_id: str
    status: str
    message: str
    created_at: datetime
    estimated_completion: Optional[datetime] = None
    
class WorkflowProgressResponse(BaseModel):
    """Progress tracking response"""
    session_id: str
    status: str
    progress: float = Field(..., ge=0, le=100)
    current_phase: Optional[str] = None
    phases_completed: List[str] = Field(default_factory=list)
    errors: List[Dict[str, str]] = Field(default_factory=list)
    partial_results: Optional[Dict[str, Any]] = None


class ErrorResponse(BaseModel):
    error: str
    message: str
    details: Optional[Dict[str, Any]] = None
    timestamp: datetime
    request_id: Optional[str] = None
