"""The web page at `/`: plain HTML, CSS and JavaScript modules from the package, no build step.
The page itself needs no key; the API calls it makes carry the key the person enters."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(str(resources.files("musicgen_server") / "web"))

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    # no-cache: a page served by a freshly upgraded server must not run yesterday's scripts.
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
