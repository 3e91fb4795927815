"""A frozen backbone with one database's prompts: the model dbprompt trains, evaluates and serves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones.base import BackboneAdapter
from .compat import BackboneId, check_backbone
from .prompts.method import PromptMethod
from .prompts.registry import method_of
from .storage import PromptFileError, read_prompt_file, write_prompt_file

if TYPE_CHECKING:
    from .onnx.manifest import ExportManifest


# Rows of a text batch per length group: batches of at least twice this many are encoded in groups of rows
# of like length (see `PromptedCLIP.encode_text`); smaller ones in one pass, trimmed to their longest row.
TEXT_GROUP_ROWS = 128


class PromptedCLIP(nn.Module):
    """Encodes text and images through the backbone's token stages with a prompt method's parts spliced in.

    The staged path is used even without prompts, so zero-shot and prompted numbers always
    come from the same code. Every learnable vector lives in `self.prompts` (a PromptMethod).
    """

    def __init__(self, backbone: BackboneAdapter, config: Any, **arguments: Any):
        """`config`: a registered prompt method's config (dbprompt's is PromptConfig); `arguments` go to the
        method's module (dbprompt's: `vocabulary`, the token ids that get offsets; see `for_captions`)."""
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.prompts: PromptMethod = method_of(config)(backbone, config, **arguments)

    # --- building, loading and saving -------------------------------------------------------------
    @classmethod
    def for_captions(cls, backbone: BackboneAdapter, config: Any, captions: Sequence[str]) -> "PromptedCLIP":
        """A model for a database with these training captions (dbprompt's word offsets cover the tokens they use most)."""
        return cls(backbone, config, **method_of(config).caption_arguments(backbone, config, captions))

    @classmethod
    def from_state(cls, backbone: BackboneAdapter, config: Any, state: dict[str, torch.Tensor]) -> "PromptedCLIP":
        """A model with these prompt tensors (a prompt file's), checked name by name and shape by shape
        against a skeleton on the meta device first, so that a forged config allocates nothing."""
        arguments = method_of(config).state_arguments(state)
        with torch.device("meta"):
            skeleton = method_of(config)(backbone, config, **arguments).state_dict()
        _check_state(state, skeleton)
        model = cls(backbone, config, **arguments)
        model.prompts.load_state_dict(state)
        return model

    @classmethod
    def from_prompt_file(
        cls, path: str | os.PathLike, backbone: BackboneAdapter | None = None, *, device: str = "cpu"
    ) -> "PromptedCLIP":
        """The model a prompt file was trained for, on `backbone` (else the one the file records, loaded
        only from local weights: see `backbones.recorded`).

        Any other backbone than the one the file records is refused, and so are token ids it does not have.
        """
        pf = read_prompt_file(path)
        if backbone is None:
            from .backbones.recorded import load_recorded_backbone

            backbone = load_recorded_backbone(pf.backbone_id, device=device, source=str(pf.path))
        check_backbone(str(pf.path), pf.backbone_id, backbone)
        try:
            model = cls.from_state(backbone, pf.config, pf.tensors)
        except ValueError as exc:
            raise PromptFileError(f"{pf.path}: {exc}") from None
        return model.to(device).eval()

    def save_prompt_file(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the prompts as a safetensors prompt file; `extra` is any JSON-able training summary."""
        return write_prompt_file(path, self.prompt_state_dict(), self.prompts.name, self.config, BackboneId.of(self.backbone), extra)

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the prompts (and the vocabulary's token ids): what a prompt file holds."""
        return {k: v.detach() for k, v in self.prompts.state_dict().items()}

    def export_onnx(self, directory: str | os.PathLike, **options: Any) -> "ExportManifest":
        """The towers as ONNX graphs with these prompts baked in, checked against PyTorch (see `onnx.export.export_onnx`)."""
        from .onnx.export import export_onnx

        return export_onnx(self, directory, **options)

    def load_prompt_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        _check_state(state, self.prompts.state_dict())
        self.prompts.load_state_dict(state)

    # --- training support ---------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "PromptedCLIP":
        """The backbone stays in eval mode whatever is trained: no dropout, frozen statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to this model) that training must not decay."""
        return {f"prompts.{n}" for n in self.prompts.no_weight_decay()}

    def image_tower_trainable(self) -> bool:
        """Whether anything inside the image tower trains. If not, the tower's output for an image never
        changes, so training computes it once per image and keeps it."""
        if self.prompts.acts_on_images:
            return True
        return any(p.requires_grad for p in self.backbone.image_tower.parameters())

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # --- text ---------------------------------------------------------------------------------------
    @property
    def text_context_length(self) -> int:
        return self.prompts.caption_length(self.backbone)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.backbone.tokenize(texts, self.text_context_length)

    def encode_texts(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.encode_text(self.tokenize(texts).to(device), normalize=normalize)

    def encode_text(self, ids: torch.Tensor, normalize: bool = True, *, trim: bool = True) -> torch.Tensor:
        """One pass of the text tower, the prompt method acting on its input and inside its blocks.

        `trim`: first drop padding columns that cannot change the result, and in batches of many rows encode
        rows of like length together (off where the graph must not depend on the ids' values: an ONNX export)."""
        if self.backbone.text_prompt_problem():  # it takes nothing (methods refuse prompts there): its own forward
            return _finish(self.backbone.encode_text(ids), normalize)
        groups = len(ids) // TEXT_GROUP_ROWS if trim and self.backbone.text_padding_is_inert() else 0
        if groups > 1:
            # Rows by length in a few groups, each trimmed to its own longest: a batch of mostly short captions
            # no longer pays for its longest one in every row (training batches of hundreds of texts).
            last = torch.where(ids != self.backbone.text_pad_id, torch.arange(ids.shape[1], device=ids.device), 0).amax(dim=1)
            order = torch.argsort(last, stable=True)
            parts = [self._text_pass(self.backbone.trim_text_padding(ids[rows])) for rows in order.tensor_split(groups)]
            return _finish(torch.cat(parts)[torch.argsort(order)], normalize)
        return _finish(self._text_pass(self.backbone.trim_text_padding(ids) if trim else ids), normalize)

    def _text_pass(self, ids: torch.Tensor) -> torch.Tensor:
        x, ids, hook = self.prompts.text_input(ids, self.backbone.text_token_embeddings(ids))
        return self.backbone.text_from_embeddings(x, ids, hook, self.prompts.in_blocks("text"))

    # --- images -------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """One pass of the image tower, the prompt method acting on its input and inside its blocks."""
        if self.backbone.visual_prompt_problem():  # it takes nothing (methods refuse prompts there): its own forward
            return _finish(self.backbone.encode_image(images), normalize)
        x, inserted, hook = self.prompts.image_input(self.backbone.image_tokens(images))
        return _finish(self.backbone.image_from_tokens(x, inserted, hook, self.prompts.in_blocks("image")), normalize)


def _check_state(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Prompt tensors must be exactly the config's: names, shapes and dtypes."""
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(
            "prompt tensors do not match the prompt config: "
            + "; ".join(part for part in (f"missing {missing}" if missing else "", f"unknown {unknown}" if unknown else "") if part)
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape or own[name].dtype != tensor.dtype:
            raise ValueError(
                f"prompt tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, expected {own[name].dtype} {tuple(own[name].shape)}"
            )


def _finish(features: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(features, dim=-1) if normalize else features
