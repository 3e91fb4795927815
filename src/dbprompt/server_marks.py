"""The search server's marks: a user says which results are, or are not, what a query asked for.

Off unless `dbprompt serve --feedback` (the server has no authentication: anyone who reaches it
could write marks). Bounded: the query's length, the marks a database keeps, and each client's
rate. Marks are kept by `marks.MarkStore`, beside each index, and train prompts with
`dbprompt train DB --feedback IDX`.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Callable

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from .marks import MAX_MARKS, MarksFull, MarkStore, marks_path
from .index import ImageRow
from .searcher import Searcher

# Marks a client may write: a burst of this many, then this many a second.
RATE_BURST, RATE_PER_SECOND = 60, 10.0

DbName = Annotated[str, PathParam(description="database name, as listed by /api/databases")]


class MarkIn(BaseModel):
    query: str = Field(min_length=1, description="the query the results were for")
    image_id: int = Field(ge=0, le=2**63 - 1, description="image id, as returned by a search")
    relevant: bool = Field(description="true: what the query asked for; false: not")


class MarkOut(BaseModel):
    query: str
    image_id: int | None = Field(description="its id in the index served now; null when the index no longer holds it")
    image_key: str
    relevant: bool
    time: float


class QueryMarks(BaseModel):
    query: str
    relevant: int
    irrelevant: int


class MarksResponse(BaseModel):
    count: int = Field(description="marks this database keeps")
    queries: list[QueryMarks] = Field(description="per query, most recently marked first")
    marks: list[MarkOut] = Field(description="the marks of `query`, when one was asked for")


class MarkStored(BaseModel):
    count: int
    stored: bool = Field(description="true: the mark was stored; false: a withdrawal")
    changed: bool = Field(description="for a withdrawal, whether there was a mark to withdraw")


class _Rate:
    """A token bucket per client address."""

    def __init__(self, burst: int, per_second: float):
        self.burst, self.per_second = burst, per_second
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, since = self._buckets.get(client, (float(self.burst), now))
            tokens = min(self.burst, tokens + (now - since) * self.per_second)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1, now)
            return True


def add_mark_routes(
    app: FastAPI,
    searcher_for: Callable[[str], Searcher],
    row_for: Callable[[str, int], tuple[Searcher, ImageRow]],
    *,
    enabled: bool,
    max_query_chars: int,
    max_marks: int = MAX_MARKS,
) -> None:
    """GET, POST and DELETE /api/databases/{name}/feedback; without `enabled`, each answers 403. `searcher_for`
    and `row_for` are the server's own lookups of a database and of one of its images (404 where unknown)."""
    stores: dict[str, MarkStore] = {}
    lock = threading.Lock()
    rate = _Rate(RATE_BURST, RATE_PER_SECOND)

    def store_for(name: str) -> tuple[Searcher, MarkStore]:
        if not enabled:
            raise HTTPException(403, "marks are off: start the server with `dbprompt serve --feedback` to keep them")
        searcher = searcher_for(name)
        path = marks_path(searcher.index.info.path)
        with lock:
            if str(path) not in stores:
                stores[str(path)] = MarkStore(path, max_marks=max_marks)
            return searcher, stores[str(path)]

    def check_query(query: str) -> str:
        if len(query) > max_query_chars:
            raise HTTPException(413, f"the query is over {max_query_chars} characters")
        if not query.strip():
            raise HTTPException(400, "the query is empty")
        return query

    def limit(request: Request) -> None:
        if not rate.allow(request.client.host if request.client else ""):
            raise HTTPException(429, f"too many marks: at most {RATE_PER_SECOND:g} a second; try again shortly", headers={"Retry-After": "1"})

    @app.post("/api/databases/{name}/feedback", response_model=MarkStored, summary="Mark a result relevant or not")
    def add_mark(name: DbName, mark: MarkIn, request: Request) -> MarkStored:
        _, store = store_for(name)
        limit(request)
        searcher, row = row_for(name, mark.image_id)  # the index that ranked it, the prompt file recorded with it
        try:
            count = store.add(check_query(mark.query), row.key, row.sha256, mark.relevant, searcher.index.info.prompt_sha256)
        except MarksFull as exc:
            raise HTTPException(413, str(exc)) from None
        return MarkStored(count=count, stored=True, changed=True)

    @app.delete("/api/databases/{name}/feedback", response_model=MarkStored, summary="Withdraw a mark")
    def withdraw_mark(
        name: DbName,
        request: Request,
        query: Annotated[str, Query(min_length=1, description="the query the mark was for")],
        image_id: Annotated[int, Query(ge=0, le=2**63 - 1, description="the image's id")],
    ) -> MarkStored:
        _, store = store_for(name)
        limit(request)
        _, row = row_for(name, image_id)
        changed = store.withdraw(check_query(query), row.key)
        return MarkStored(count=store.count(), stored=False, changed=changed)

    @app.get("/api/databases/{name}/feedback", response_model=MarksResponse, summary="The marks kept")
    def list_marks(
        name: DbName, query: Annotated[str | None, Query(min_length=1, description="also list this query's marks")] = None
    ) -> MarksResponse:
        searcher, store = store_for(name)
        marks = store.marks(check_query(query)) if query is not None else []
        ids = searcher.index.ids_of([m.image_key for m in marks])
        listed = [MarkOut(query=m.query, image_id=ids.get(m.image_key), image_key=m.image_key, relevant=m.relevant, time=m.time) for m in marks]
        return MarksResponse(count=store.count(), queries=[QueryMarks(**q) for q in store.queries()], marks=listed)

    app.state.mark_stores = stores
