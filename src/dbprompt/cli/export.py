"""`dbprompt export PROMPTS --onnx DIR`: a prompt file's towers as ONNX graphs, for ONNX Runtime."""

from __future__ import annotations

import argparse

from .common import add_model_args, add_output_args, emit, message


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a prompt file's image and text towers to ONNX",
        description=(
            "Write the image and text towers of PROMPTS' model, the prompts baked in, as ONNX graphs (dynamic batch, "
            "opset 18) into DIR, with the tokenizer's files and a manifest (backbone fingerprint, prompt file sha256, "
            "input size, normalisation). Each tower is run on ONNX Runtime against PyTorch before it is kept: an "
            "export whose features differ by more than 1e-4 is refused. Needs pip install 'dbprompt[onnx]'."
        ),
    )
    p.add_argument("prompts", metavar="PROMPTS", help="prompt file")
    p.add_argument("--onnx", required=True, metavar="DIR", help="directory to write (a new or empty one, or an earlier export, replaced)")
    p.add_argument("--int8", action="store_true", help="also an image tower with int8 weights (dynamic quantization): faster, features a little off")
    add_model_args(p, required=False, recorded=True)
    add_output_args(p, progress=False)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from ..onnx.prompt_file import export_prompts

    manifest = export_prompts(args.prompts, args.onnx, model=args.model, pretrained=args.pretrained, int8=args.int8, log=message)
    check = manifest.check
    lines = [
        f"ONNX export of {args.prompts} on {manifest.backbone} ({manifest.pretrained}) in {manifest.path}",
        f"checked against PyTorch on {check['batch']} images and {check['captions']} captions: max abs difference "
        f"image {check['image_max_abs_diff']:.1e}, text {check['text_max_abs_diff']:.1e}",
    ]
    if manifest.int8:
        lines.append(f"int8 image tower: cosine to fp32 features >= {check['int8_min_cosine']:.4f} on the check images")
    emit(args, manifest.to_json() | {"path": str(manifest.path)}, "\n".join(lines))
    return 0
