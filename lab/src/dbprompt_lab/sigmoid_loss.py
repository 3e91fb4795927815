"""SigLIP's pairwise sigmoid loss, for pre-training the second proxy (dbprompt-proxy-b).

The first proxy was pre-trained with the contrastive loss (open_clip's ClipLoss) and so are the
prompts dbprompt trains; a second proxy pre-trained with the other loss CLIP-like models use is a
different measuring stick (issue 28). dbprompt needs no sigmoid loss of its own, so this one lives in
the lab and replaces the Trainer's `loss` (the module each micro-batch's features go through).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dbprompt.training.loss import Keys, relevance


class SigmoidLoss(nn.Module):
    """Every (image, text) of a batch a binary decision: -log sigmoid(±(scale * cos + bias)), summed over the
    pairs and divided by the batch size, as SigLIP does; the scale and bias are the model's own (open_clip's
    `logit_scale` and `logit_bias`), trained with its weights."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        if getattr(clip, "logit_bias", None) is None:
            raise ValueError("the sigmoid loss needs a model with a logit_bias (an open_clip config with init_logit_bias)")
        self._clip = (clip,)  # outside the module tree: the model owns (and the optimizer trains) both

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, keys: Keys | None = None, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`keys` as the contrastive loss takes them: a text is a positive of every image it is relevant to."""
        if negatives is not None and len(negatives):
            raise ValueError("the sigmoid loss takes no marked negatives")
        clip = self._clip[0]
        logits = clip.logit_scale.exp() * image_features.float() @ text_features.float().T + clip.logit_bias
        n = len(image_features)
        positive = relevance(keys).to(logits.device) if keys is not None else torch.eye(n, dtype=torch.bool, device=logits.device)
        signs = positive.float() * 2 - 1
        return -F.logsigmoid(signs * logits).sum() / n
