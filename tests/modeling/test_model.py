"""neural_router.modeling.model: the network's forward paths, freezing and saved files."""

import torch

from neural_router.modeling.model import RouterConfig, RouterModel

from tests.conftest import tiny_encoder_config


def test_cached_forward_matches_full_forward():
    cfg = RouterConfig(models=["a", "b"], binary=[True, True], hidden=16)
    m = RouterModel.from_encoder_config(cfg, tiny_encoder_config()).eval()
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    feats = torch.randn(3, 6)
    with torch.no_grad():
        full = m(ids, mask, feats)["quality_logits"]
        cached = m.forward_from(m.hidden_after(ids, mask, 1), mask, feats, 1)["quality_logits"]
    assert torch.allclose(full, cached, atol=1e-5)


def test_freeze_lower_freezes_embeddings_and_layers():
    cfg = RouterConfig(models=["a"], binary=[True], hidden=8)
    m = RouterModel.from_encoder_config(cfg, tiny_encoder_config())
    m.freeze_lower(1)
    assert not any(p.requires_grad for p in m.encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in m.encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in m.encoder.encoder.layer[1].parameters())


def test_saved_weights_are_as_readable_as_the_rest_of_the_folder(tiny_trained_dir):
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tiny_trained_dir / "model.safetensors") == mode(tiny_trained_dir / "router_config.json")
