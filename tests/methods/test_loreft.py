import torch

from repedit.methods import available_methods, build, get_method
from repedit.methods.base import OrthonormalRows
from repedit.methods.loreft import LoReFT, LoReFTConfig


def test_registered_with_help():
    assert "loreft" in available_methods()
    spec = get_method("loreft")
    assert spec.config_cls is LoReFTConfig and spec.module_cls is LoReFT
    assert all(LoReFTConfig.help().values())


def test_formula_matches_reference():
    phi = build("loreft", {"rank": 3, "seed": 0}, hidden_size=16)
    h = torch.randn(2, 5, 16)
    R = phi.rotate.matrix()
    W, b = phi.learned_source.weight, phi.learned_source.bias
    ref = h + (h @ W.T + b - h @ R.T) @ R
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(phi(h, mask), ref, atol=1e-6)
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-5)
    # masked positions are untouched, bit for bit
    mask[0, 1] = False
    assert torch.equal(phi(h, mask)[0, 1], h[0, 1])


def test_rotation_stays_orthonormal_under_training():
    rot = OrthonormalRows(12, 4, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(rot.parameters(), lr=0.5)
    for _ in range(5):
        loss = (rot.matrix() @ torch.randn(12)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    R = rot.matrix()
    assert torch.allclose(R @ R.T, torch.eye(4), atol=1e-5)


def test_rotation_cached_at_inference(monkeypatch):
    phi = build("loreft", {"rank": 2, "seed": 0}, hidden_size=8)
    h = torch.randn(1, 3, 8)
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        first = phi(h, mask)
    calls = []
    real = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        second = phi(h, mask)
    assert not calls and torch.equal(first, second)
    with torch.no_grad():  # a parameter change invalidates the cache
        phi.rotate.original.add_(0.1)
        phi(h, mask)
    assert calls


def test_gradients_flow_to_parameters():
    phi = build("loreft", {"rank": 2, "seed": 0}, hidden_size=8)
    h = torch.randn(1, 3, 8, requires_grad=True)
    phi(h, torch.ones(1, 3, dtype=torch.bool)).sum().backward()
    assert phi.learned_source.weight.grad is not None and phi.rotate.original.grad is not None
    assert h.grad is not None


def test_method_without_edit_or_forward_is_rejected_at_definition():
    import pytest

    from repedit.methods.base import Intervention

    with pytest.raises(TypeError, match="edit"):
        class Broken(Intervention):  # noqa: F841
            pass


def test_config_values_are_type_checked_against_the_fields():
    import pytest

    from repedit.methods import config_from_dict

    for method, values, message in [
        ("loreft", {"rank": "two"}, "option 'rank' of method 'loreft' must be int, got str 'two'"),
        ("loreft", {"rank": 2.0}, "must be int, got float"),
        ("loreft", {"rank": True}, "must be int, got bool"),
        ("loreft", {"seed": "0"}, "'seed' of method 'loreft' must be int | None, got str"),
        ("loreft", {"dropout": "0.1"}, "'dropout' of method 'loreft' must be float"),
        ("baft", {"incremental": 1}, "'incremental' of method 'baft' must be bool, got int"),
        ("codebook", {"entries": {}}, "'entries' of method 'codebook' must be list, got dict"),
    ]:
        with pytest.raises(ValueError) as err:
            config_from_dict(method, values, strict=True)
        assert message in str(err.value)
        with pytest.raises(ValueError, match="must be"):
            build(method, values, hidden_size=16)
    cfg = config_from_dict("loreft", {"rank": 2, "dropout": 0, "seed": None})  # an int is a float in JSON
    assert cfg.rank == 2 and cfg.dropout == 0 and cfg.seed is None
