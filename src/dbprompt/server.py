"""The search server: a JSON API and a web page over one or more indexes.

Files are only ever served by image id from an index's metadata, only while they resolve inside
the folder that was indexed and hold the very bytes that were (sha256), and exactly those bytes
are sent: no client-supplied path reaches the file system. Request bodies are capped before they
are read, validation errors never echo the input back, and an index replaced on disk is picked
up without a restart.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, AsyncIterator

import uvicorn
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from .data.errors import IMAGE_TOO_LARGE, DataError
from .data.images import decode_image, plain
from .index import Hits, ImageRow
from .index.about import describe
from .index.calibration import weak_below
from .index.files import ImageUnavailable, indexed_bytes
from .runtime import Runtime
from .searcher import IndexDirs, IndexSet, Searcher, StaleIndexError
from .server_images import Thumbnails, file_name, media_type_of
from .server_marks import add_mark_routes

if TYPE_CHECKING:  # torch: a server running ONNX towers alone never imports it
    from .backbones import BackboneAdapter

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_QUERY_CHARS = 500
MAX_K = 100
MAX_OFFSET = 900  # "more results" pages through the best MAX_OFFSET + MAX_K (each page searches all before it)
MAX_FOLDER_CHARS = MAX_TAG_CHARS = 1000
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
THUMBNAIL_CACHE = 2048
# Multipart framing around an uploaded file: boundaries, part headers, the other fields.
_FORM_OVERHEAD = 64 * 2**10

# The page and its assets load from this server only; nothing is fetched from anywhere else.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


DbName = Annotated[str, PathParam(description="database name, as listed by /api/databases")]
ImageId = Annotated[int, PathParam(ge=0, le=2**63 - 1, description="image id, as returned by a search")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="number of results")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip: the next page starts at offset + k")]
Folder = Annotated[
    str | None, Query(max_length=MAX_FOLDER_CHARS, description="only images in this folder (one of the database's `folders`)")
]
Tag = Annotated[str | None, Query(max_length=MAX_TAG_CHARS, description="only images with this tag (one of the database's tags)")]
UploadedImage = Annotated[UploadFile, File(description="an image file (PNG, JPEG, ...) within the server's size limit")]


class ValR1(BaseModel):
    """Text-to-image R@1 on the validation split, as training recorded it: before training and at the epoch kept."""

    zero_shot: float
    trained: float
    epoch: int


class DatabaseInfo(BaseModel):
    name: str
    count: int
    dim: int
    kind: str
    backbone: str
    pretrained: str | None
    fingerprint: str
    prompt_sha256: str
    created: str
    problem: str | None = None  # set while the index's directory holds nothing that can be opened
    feedback: bool = False  # whether the server keeps marks on its results (`serve --feedback`)
    # What the page's header says (index/about.py): None where the index or prompt file does not record it.
    prompt_file: str | None = None
    prompt_modified: str | None = None
    prompts: str | None = None  # "zero-shot", or the kinds of prompts trained ("textual+visual")
    trained_on: str | None = None
    train_images: int | None = None
    val_r1: ValR1 | None = None
    examples: list[str] = []  # captions of the database, to try as queries
    folders: dict[str, int] = {}  # images per folder, where there is more than one: `folder=` narrows a search
    tags: dict[str, int] = {}  # images per tag, the most frequent first (at most about.MAX_TAGS): `tag=` narrows a search
    weak_below: float = 0.2  # a text query whose best score is below this matched nothing well
    weak_calibrated: bool = False  # whether that line was measured on this index (else the legacy one)


class Result(BaseModel):
    id: int
    key: str
    score: float
    captions: list[str]
    tags: list[str] = []
    width: int
    height: int
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    database: str
    query: str | None
    k: int
    offset: int = 0
    folder: str | None = None
    tag: str | None = None
    took_ms: float
    results: list[Result]
    missing: int = 0  # better-ranked images left out because their files are gone
    note: str | None = None  # set when most of them are: the collection is not where it was indexed
    weak: bool = False  # a text query whose best score is under weak_below: it matched nothing well
    weak_below: float | None = None  # the database's line for text queries (DatabaseInfo.weak_below), as of this search


class _BodyLimit:
    """Refuse request bodies over `limit` bytes, or of unknown length, before reading a byte of them."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = dict(scope["headers"]).get(b"content-length")
            problem = None
            if length is None:
                problem = (411, "a Content-Length header is required")
            elif not length.isdigit() or int(length) > self.limit:
                problem = (413, f"request body over {self.limit} bytes")
            if problem:
                await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    index_dirs: IndexDirs,
    *,
    runtime: Runtime | None = None,
    backbone: BackboneAdapter | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    feedback: bool = False,
) -> FastAPI:
    """The app over `index_dirs` (opened here, one backbone shared: `backbone`, else each index's recorded one;
    named as searcher.named_dirs says); with `feedback`, it keeps the marks users put on results (see server_marks)."""
    if not index_dirs:
        raise ValueError("give at least one index directory")
    indexes = IndexSet(index_dirs, runtime, backbone=backbone)
    thumbnails = Thumbnails(THUMBNAIL_CACHE)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # Stopped (Ctrl-C, SIGTERM): each mark store's log folded into its file, each index's files let go.
        for store in app.state.mark_stores.values():
            store.close()
        indexes.close()

    # /docs and /redoc with their scripts served from here: FastAPI's default pages load them from a CDN.
    app = FastAPIOffline(
        title="dbprompt search",
        description="Text and image search over image databases, each through its own trained prompts.",
        version="1",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, limit=max_upload_bytes + _FORM_OVERHEAD)

    def searcher_for(name: str) -> Searcher:
        try:
            return indexes[name]
        except KeyError:
            # The name is not echoed: whatever a client sends stays out of the answer.
            raise HTTPException(404, f"no such database; known: {', '.join(sorted(indexes.names()))}") from None
        except StaleIndexError as exc:
            raise HTTPException(503, str(exc)) from None

    def row_for(name: str, image_id: int) -> tuple[Searcher, ImageRow]:
        searcher = searcher_for(name)
        row = searcher.index.row(image_id)
        if row is None:
            raise HTTPException(404, f"database {name!r} has no image {image_id}")
        return searcher, row

    def image_for(name: str, image_id: int) -> tuple[ImageRow, bytes]:
        searcher, row = row_for(name, image_id)
        try:
            return row, indexed_bytes(row, searcher.index.root)
        except ImageUnavailable as exc:
            raise HTTPException(404, f"image {image_id} of {name!r} cannot be sent: {exc}") from None

    def respond(
        searcher: Searcher, name: str, query: str | None, k: int, offset: int, filters: dict[str, str | None], hits: Hits,
        start: float,
    ) -> SearchResponse:
        base = f"/api/databases/{name}"
        results = [
            Result(
                id=h.image.id, key=h.image.key, score=round(h.score, 6), captions=list(h.image.captions), tags=list(h.image.tags),
                width=h.image.width, height=h.image.height,
                image_url=f"{base}/images/{h.image.id}", thumbnail_url=f"{base}/thumbnails/{h.image.id}",
            )
            for h in hits
        ]
        took = round((time.perf_counter() - start) * 1000, 3)
        # Page 1 decides: later pages are weaker by construction, and the hint is about the query.
        line = weak_below(searcher.index.info.calibration)[0] if query is not None else None
        weak = line is not None and offset == 0 and (not hits or hits[0].score < line)
        return SearchResponse(
            database=name, query=query, k=k, offset=offset, **filters, took_ms=took, results=results, missing=hits.missing,
            note=searcher.missing_note(hits), weak=weak, weak_below=line,
        )

    @app.exception_handler(ValueError)
    def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without the `input` it would echo back (a 100 KB query came back whole)."""
        errors = [{k: v for k, v in error.items() if k not in ("input", "url")} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.get("/api/databases", response_model=list[DatabaseInfo], summary="List the databases")
    def list_databases() -> list[DatabaseInfo]:
        listed = []
        for name in indexes.names():
            entry = indexes.entry(name)
            info = entry.info
            about = describe(entry.searcher.index) if entry.searcher is not None else {}
            listed.append(DatabaseInfo(
                name=name, count=info.count, dim=info.dim, kind=info.kind, backbone=info.backbone,
                pretrained=info.pretrained, fingerprint=info.fingerprint, prompt_sha256=info.prompt_sha256,
                created=info.created, problem=entry.problem, feedback=feedback, **about,
            ))
        return listed

    @app.get("/api/databases/{name}/search", response_model=SearchResponse, summary="Search by text")
    def search_text(
        name: DbName,
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="what to look for")],
        k: K = 10,
        offset: Offset = 0,
        folder: Folder = None,
        tag: Tag = None,
    ) -> SearchResponse:
        start = time.perf_counter()
        searcher = searcher_for(name)
        if not q.strip():
            raise HTTPException(400, "the query is empty")
        hits = searcher.search_text(q, k, offset=offset, folder=folder, tag=tag)
        return respond(searcher, name, q, k, offset, {"folder": folder, "tag": tag}, hits, start)

    @app.post("/api/databases/{name}/search/image", response_model=SearchResponse, summary="Search by image")
    def search_image(
        name: DbName,
        image: UploadedImage,
        k: K = 10,
        offset: Offset = 0,
        folder: Folder = None,
        tag: Tag = None,
    ) -> SearchResponse:
        start = time.perf_counter()
        searcher = searcher_for(name)
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"image over {max_upload_bytes} bytes")
        hits = searcher.search_image(_decode_upload(data), k, offset=offset, folder=folder, tag=tag)
        return respond(searcher, name, None, k, offset, {"folder": folder, "tag": tag}, hits, start)

    @app.get("/api/databases/{name}/images/{image_id}", summary="The indexed image file")
    def get_image(
        name: DbName, image_id: ImageId, download: Annotated[bool, Query(description="as an attachment, to save")] = False
    ) -> Response:
        row, data = image_for(name, image_id)
        media_type = media_type_of(row, data)
        headers = {"X-Content-Type-Options": "nosniff"}
        if download:
            headers["Content-Disposition"] = f'attachment; filename="{file_name(row, media_type)}"'
        return Response(data, media_type=media_type, headers=headers)

    @app.get("/api/databases/{name}/thumbnails/{image_id}", summary="A JPEG thumbnail of an indexed image")
    def get_thumbnail(
        name: DbName,
        image_id: ImageId,
        size: Annotated[int, Query(ge=16, le=1024, description="longest side in pixels")] = 256,
    ) -> Response:
        row, data = image_for(name, image_id)
        try:
            jpeg = thumbnails.get(row.sha256, size, data)
        except Exception as exc:  # PIL raises many types for bad data
            raise HTTPException(404, f"image {image_id} of {name!r} cannot be read: {plain(exc)}") from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    add_mark_routes(app, searcher_for, row_for, enabled=feedback, max_query_chars=MAX_QUERY_CHARS)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.searchers = indexes
    return app


def _decode_upload(data: bytes) -> Image.Image:
    """An RGB image from uploaded bytes; anything else is the client's error, in plain words."""
    try:
        return decode_image(data, "the uploaded image", MAX_UPLOAD_PIXELS)
    except DataError as exc:
        if exc.problem == IMAGE_TOO_LARGE:
            raise HTTPException(413, f"image too large: {exc.detail}") from None
        raise HTTPException(400, f"not a readable image: {exc.detail or exc.problem}") from None


def serve(
    index_dirs: IndexDirs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    runtime: Runtime | None = None,
    backbone: BackboneAdapter | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    feedback: bool = False,
) -> None:
    """Open the indexes, then serve until interrupted."""
    app = create_app(index_dirs, runtime=runtime, backbone=backbone, max_upload_bytes=max_upload_bytes, feedback=feedback)
    uvicorn.run(app, host=host, port=port, log_level="info")
