"""The token-level interface a frozen dual encoder offers to prompts.

Prompt modules only ever see this interface: they get token sequences, may insert tokens,
may rewrite positions between layers through a hook, and may act inside each block through
`BlockPrompt`: the block runs in its parts (`BlockView`) and asks each prompt at its
attention and its MLP, in the same single pass. This module knows towers and blocks, never a
prompt kind; everything that knows a backbone's internals lives in the adapter that implements it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Called before transformer layer `i` (and after the last, with i = layers) with the current token sequence;
# returns it (possibly changed).
LayerHook = Callable[[int, torch.Tensor], torch.Tensor]

# Stands in for prompt positions in the token-id sequence used for pooling and masks.
# Negative, so it never equals a real end, padding or start id and never wins an argmax.
PROMPT_ID = -1

_FINGERPRINT_SAMPLES = 4096


class UnsupportedPromptError(ValueError):
    """A prompt kind was asked of a tower that cannot take tokens."""


class BlockPrompt:
    """What acts inside a tower's blocks (PEFT's layer classes): a prompt kind overrides the steps it changes.

    Each step gets the layer's index, the block in parts (its norms and projections, to compute
    with the backbone's own weights) and that step's tensors, and returns them changed; the
    defaults change nothing. Every kind must start at the backbone's own output.
    """

    def acts_at(self, layer: int) -> bool:
        """Whether this layer's block must run in parts for it (else the block's own forward runs)."""
        return True

    def attention(self, layer: int, block: "BlockView", q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Per-head attention outputs a [B, H, L, head_dim], from the block's queries q [B, H, L, head_dim]."""
        return a

    def mlp(self, layer: int, block: "BlockView", h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The MLP branch's output [B, L, D], from the block's normed input h [B, L, D]."""
        return out


def parts_are_faster(x: torch.Tensor) -> bool:
    """bf16 activations on a CPU: open_clip's own attention copies its strided heads before every batched
    product there, and a ViT-B-32 block ran 3.4x slower whole than in parts (BENCHMARKS.md, Core)."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu"


class BlockView(ABC):
    """One pre-norm transformer block seen in parts, so that prompts can act inside it.

        x = x + attention_output(prompts' attention(attend(qkv(norm1(x)))))
        x = x + prompts' mlp(mlp_branch(norm2(x)))

    Where no prompt acts, the block's own forward runs, untouched (adapters injected by other
    tools, e.g. LoRA, keep working).
    """

    num_heads: int
    norm1: nn.Module
    norm2: nn.Module

    @abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The block's own forward."""

    @abstractmethod
    def qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values [B, H, L, head_dim] of the normed input h [B, L, D]."""

    @abstractmethod
    def attention_output(self, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The attention branch's contribution [B, L, D] from per-head outputs a [B, H, L, head_dim]."""

    @abstractmethod
    def mlp_branch(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP branch's contribution [B, L, D] from the normed input."""

    def run(self, x: torch.Tensor, mask: torch.Tensor | None, layer: int, prompts: Sequence[BlockPrompt]) -> torch.Tensor:
        """The block in parts, each of `prompts` acting at its attention and its MLP (none: the bare parts)."""
        h = self.norm1(x)
        q, k, v = self.qkv(h)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
        for p in prompts:
            a = p.attention(layer, self, q, a)
        x = x + self.attention_output(a, h)
        h = self.norm2(x)
        out = self.mlp_branch(h)
        for p in prompts:
            out = p.mlp(layer, self, h, out)
        return x + out


class BackboneAdapter(nn.Module, ABC):
    """A frozen CLIP-like model seen as token stages.

    Text:  ids -> token embeddings -> [insert] -> +positions -> layers(hook) -> norm -> pool -> projection
    Image: pixels -> patch + prefix tokens + positions (+ pre-norm) -> [insert] -> layers(hook)
           -> drop prompt positions -> pool -> projection
    """

    name: str
    pretrained: str | None
    context_length: int
    # Token ids the text tower embeds (word offsets and prompt files are checked against it).
    vocab_size: int
    # The id that fills a caption's tokens after its end (0 for CLIP's BPE, the end token for SigLIP's).
    text_pad_id: int
    text_width: int
    text_num_layers: int
    # Token positions before the textual insertion point (1 when the tokenizer emits a start token).
    text_prefix_len: int
    vision_width: int
    vision_num_layers: int
    # Class / register tokens before the patch tokens; visual prompts go right after them.
    vision_prefix_len: int
    image_size: tuple[int, int]
    # Width of the image features the tower outputs (what training keeps per image when the tower is frozen).
    embed_dim: int

    # --- capability -----------------------------------------------------------------
    def text_prompt_problem(self) -> str | None:
        """Why textual prompts cannot be used on this backbone, or None when they can."""
        return None

    def visual_prompt_problem(self) -> str | None:
        """Why visual prompts cannot be used on this backbone, or None when they can."""
        return None

    @abstractmethod
    def blocks(self, tower: str) -> list[BlockView] | None:
        """The tower's ("text" or "image") blocks as views, or None when its block type is not one the
        adapter can open (then nothing can act inside its blocks; prompts that only insert tokens still can)."""

    @abstractmethod
    def num_heads(self, tower: str) -> int:
        """Attention heads per layer of the tower."""

    @abstractmethod
    def block_forwards(self, tower: str) -> list[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]:
        """Each of the tower's blocks as its own forward, (x, mask) -> x."""

    def run_blocks(
        self,
        tower: str,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        hook: LayerHook | None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        """The tower's blocks in order: `hook` before block i and once more after the last (i = number of
        blocks); block i in parts with the `prompts` that act there, else its own forward (or its bare parts
        where those are faster)."""
        faster = parts_are_faster(x)
        views = self.blocks(tower) if prompts or faster else None
        forwards = self.block_forwards(tower)
        for i, forward in enumerate(forwards):
            if hook is not None:
                x = hook(i, x)
            acting = [p for p in prompts if p.acts_at(i)]
            x = views[i].run(x, mask, i, acting) if acting or (faster and views is not None) else forward(x, mask)
        return hook(len(forwards), x) if hook is not None else x

    # --- text -----------------------------------------------------------------------
    @abstractmethod
    def tokenize(self, texts: Sequence[str], context_length: int) -> torch.Tensor:
        """Token ids [B, context_length]; truncation keeps the end token."""

    def text_padding_is_inert(self) -> bool:
        """True when tokens after a caption's end cannot change its features (causal attention, end-token pooling)."""
        return False

    def trim_text_padding(self, ids: torch.Tensor) -> torch.Tensor:
        """Drop trailing all-padding columns when they cannot change the result.

        Captions are much shorter than the context, so this cuts text cost severalfold.
        """
        return ids

    @abstractmethod
    def text_token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, L, D] without positions."""

    @abstractmethod
    def text_from_embeddings(
        self,
        x: torch.Tensor,
        ids: torch.Tensor,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        """Features [B, E] from a full-length embedding sequence.

        `ids` has the same length as `x`; prompt positions hold PROMPT_ID so pooling
        at the end token and padding masks land on the right positions. `prompts` act
        inside the blocks (see `run_blocks`).
        """

    # --- image ----------------------------------------------------------------------
    @abstractmethod
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Input token sequence [B, prefix + patches, D], positions added, pre-norm applied."""

    @abstractmethod
    def image_from_tokens(
        self,
        x: torch.Tensor,
        num_prompts: int = 0,
        hook: LayerHook | None = None,
        prompts: Sequence[BlockPrompt] = (),
    ) -> torch.Tensor:
        """Features [B, E]; the `num_prompts` positions after the prefix are dropped before pooling.

        `prompts` act inside the blocks (see `run_blocks`).
        """

    def drop_prompt_tokens(self, x: torch.Tensor, num_prompts: int) -> torch.Tensor:
        """The image tokens without the `num_prompts` inserted after the prefix: pooling never sees them."""
        if not num_prompts:
            return x
        p = self.vision_prefix_len
        return torch.cat([x[:, :p], x[:, p + num_prompts :]], dim=1)

    # --- whole model ----------------------------------------------------------------
    @abstractmethod
    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """The backbone's own, unprompted text features."""

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's own, unprompted image features."""

    @property
    @abstractmethod
    def logit_scale(self) -> torch.Tensor:
        """Log of the contrastive temperature's inverse, as trained with the backbone."""

    @abstractmethod
    def image_transform(self) -> Callable:
        """PIL image -> tensor, as the backbone was evaluated (no augmentation)."""

    def fingerprint(self) -> str:
        """A short digest of the weights, so prompts are never applied to another backbone.

        Hashes names, shapes and an evenly strided sample of every tensor: it tells
        checkpoints apart in well under a second even for large models.
        """
        if getattr(self, "_fingerprint", None) is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                stride = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
                sample = flat[::stride].to(torch.float32).cpu().numpy()
                digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
                digest.update(sample.tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @property
    @abstractmethod
    def image_tower(self) -> nn.Module:
        """The module holding every weight of the image side (to know whether image features can be cached)."""
