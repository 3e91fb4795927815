"""Image indexes: one database embedded through its visual prompt, searchable without the database.

manifest (what made it), vectors (FAISS), metadata (SQLite), build (embed, checkpoint, update),
search (vectors + metadata of an opened index). Names are imported on first use.
"""

from ..lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "build_index": "dbprompt.index.build",
        "write_index": "dbprompt.index.build",
        "FORMAT": "dbprompt.index.manifest",
        "IndexFormatError": "dbprompt.index.manifest",
        "IndexInfo": "dbprompt.index.manifest",
        "read_info": "dbprompt.index.manifest",
        "ImageRow": "dbprompt.index.metadata",
        "Hit": "dbprompt.index.search",
        "Hits": "dbprompt.index.search",
        "SearchIndex": "dbprompt.index.search",
        "load_index": "dbprompt.index.search",
        "APPROX_THRESHOLD": "dbprompt.index.manifest",
        "KINDS": "dbprompt.index.manifest",
        "all_vectors": "dbprompt.index.vectors",
        "resolve_kind": "dbprompt.index.vectors",
    },
)
