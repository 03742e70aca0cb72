"""The router network: a pretrained transformer encoder + per-candidate heads.

    prompt tokens --encoder--> mean-pooled vector --+
    request features (length, language, modalities, max_tokens) --+--> MLP trunk --> heads
        quality      [M]  sigmoid: P(success) for 0/1 scores, expected score for graded ones
        out_tokens   [M]  exp: expected completion length (-> cost with the pool's prices)
        latency      [M]  exp: expected latency in ms (used where latency was measured)

Saved as a Hugging Face-style folder: ``router_config.json``, ``config.json`` (the encoder's),
``model.safetensors``, tokenizer files, ``models.yaml`` (the pool) and a model card ``README.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from neural_router.modeling.config import (DEFAULT_ENCODER, FORMAT_VERSION, HEADS, RouterConfig,
                                           resolve_encoder)

__all__ = ["DEFAULT_ENCODER", "FORMAT_VERSION", "HEADS", "RouterConfig", "RouterModel", "mean_pool",
           "resolve_encoder", "to_outputs"]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _readable_like_siblings(path: Path, sibling: Path) -> None:
    """safetensors writes its file private (0600) whatever the umask; give it its sibling's mode so
    that a service running as another user (e.g. in a container) can read the weights it can see."""
    import os
    import stat

    os.chmod(path, stat.S_IMODE(sibling.stat().st_mode))


class RouterModel(nn.Module):
    def __init__(self, config: RouterConfig, encoder: nn.Module):
        super().__init__()
        self.config = config
        self.encoder = encoder
        h, m = encoder.config.hidden_size, len(config.models)
        self.feature_norm = nn.LayerNorm(config.n_features)
        self.trunk = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(h + config.n_features, config.hidden),
                                   nn.GELU(), nn.Dropout(config.dropout))
        self.quality = nn.Linear(config.hidden, m)
        self.out_tokens = nn.Linear(config.hidden, m)
        self.latency = nn.Linear(config.hidden, m)
        with torch.no_grad():
            self.out_tokens.bias.copy_(torch.log1p(torch.tensor(config.default_output_tokens)))

    # ---- forward ------------------------------------------------------------------------------
    def heads(self, pooled: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(torch.cat([pooled, self.feature_norm(features)], dim=-1))
        return {"quality_logits": self.quality(z), "log_out_tokens": self.out_tokens(z),
                "log_latency": self.latency(z)}

    def forward(self, input_ids, attention_mask, features):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.heads(mean_pool(hidden, attention_mask), features)

    # Cached-activation training: run only the top layers on stored hidden states.
    def supports_layer_cache(self) -> bool:
        enc = self.encoder
        return hasattr(enc, "embeddings") and hasattr(getattr(enc, "encoder", None), "layer")

    def hidden_after(self, input_ids, attention_mask, n_layers: int) -> torch.Tensor:
        """Hidden states after the embeddings and the first ``n_layers`` layers (only those run)."""
        hidden = self.encoder.embeddings(input_ids=input_ids)
        return self._layers(hidden, attention_mask, 0, n_layers)

    def _layers(self, hidden, attention_mask, start: int, stop: int | None):
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                         attention_mask=attention_mask)
        for layer in self.encoder.encoder.layer[start:stop]:
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def forward_from(self, hidden, attention_mask, features, start_layer: int):
        hidden = self._layers(hidden, attention_mask, start_layer, None)
        return self.heads(mean_pool(hidden, attention_mask), features)

    def freeze_lower(self, n_layers: int) -> None:
        """Freeze the embeddings and the first n encoder layers (n < 0: freeze the whole encoder)."""
        if n_layers == 0:
            return
        if n_layers < 0 or not self.supports_layer_cache():
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            return
        for p in self.encoder.embeddings.parameters():
            p.requires_grad_(False)
        for layer in self.encoder.encoder.layer[:n_layers]:
            for p in layer.parameters():
                p.requires_grad_(False)

    def truncate_encoder(self, n_layers: int) -> None:
        """Keep only the encoder's first ``n_layers`` layers (its config says so too, so the saved
        folder loads as the smaller encoder). Each layer dropped from MiniLM-L6 saves a sixth of the
        encoder's compute."""
        have = self.num_layers()
        if not self.supports_layer_cache():
            raise ValueError(f"cannot truncate a {type(self.encoder).__name__}: it has no encoder.layer list")
        if not 1 <= n_layers <= have:
            raise ValueError(f"encoder_layers must be between 1 and the encoder's {have} layers, got {n_layers}")
        self.encoder.encoder.layer = self.encoder.encoder.layer[:n_layers]
        self.encoder.config.num_hidden_layers = n_layers

    def num_layers(self) -> int:
        return int(getattr(self.encoder.config, "num_hidden_layers", 0))

    # ---- construction & io --------------------------------------------------------------------
    @classmethod
    def from_encoder(cls, config: RouterConfig, encoder_name_or_path: str) -> "RouterModel":
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(resolve_encoder(encoder_name_or_path))
        return cls(config, encoder)

    @classmethod
    def from_encoder_config(cls, config: RouterConfig, encoder_config) -> "RouterModel":
        """Randomly initialised encoder (tests, tiny models)."""
        from transformers import AutoModel

        return cls(config, AutoModel.from_config(encoder_config))

    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.to_json(d / "router_config.json")
        self.encoder.config.save_pretrained(d)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        _readable_like_siblings(d / "model.safetensors", d / "router_config.json")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "RouterModel":
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel

        d = Path(directory)
        config = RouterConfig.from_json(d / "router_config.json")
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(d))
        model = cls(config, encoder)
        missing, unexpected = model.load_state_dict(load_file(str(d / "model.safetensors")), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"{d}/model.safetensors does not match the router config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        model.eval()
        return model


def to_outputs(raw: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Network outputs -> quality in [0,1], output tokens, latency ms (numpy)."""
    return {"quality": torch.sigmoid(raw["quality_logits"]).detach().cpu().numpy(),
            "out_tokens": (torch.exp(raw["log_out_tokens"].clamp(max=12)) - 1.0).clamp(min=1).detach().cpu().numpy(),
            "latency": torch.exp(raw["log_latency"].clamp(max=14)).detach().cpu().numpy()}
