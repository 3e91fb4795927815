"""A prompt file's towers as ONNX graphs (`dbprompt export PROMPTS --onnx DIR`) and on ONNX Runtime.

`export` needs torch; `towers` and `manifest` do not, so a server that runs exported towers never
imports it. Names are imported on first use.
"""

from ..lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "export_onnx": "dbprompt.onnx.export",
        "export_prompts": "dbprompt.onnx.prompt_file",
        "OnnxTowers": "dbprompt.onnx.towers",
        "OnnxRuntimeMissingError": "dbprompt.onnx.towers",
        "ExportManifest": "dbprompt.onnx.manifest",
        "OnnxExportError": "dbprompt.onnx.manifest",
        "StaleExportError": "dbprompt.onnx.manifest",
        "read_export_manifest": "dbprompt.onnx.manifest",
    },
)
