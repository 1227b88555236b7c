"""Blueprint placeholder: filled by the feature that owns it."""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()
