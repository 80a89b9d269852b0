import pytest
import torch
from torch import nn

import repedit
from repedit.arch import ARCHITECTURES, ArchLayout, register_architecture, resolve_layout

from conftest import ARCHS, tiny_model

REQUIRED = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2", "gptj", "gpt_neox", "phi3"]


def test_table_covers_required_types():
    assert set(REQUIRED) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("component", ["block_output", "mlp_output", "attention_output"])
def test_every_arch_and_component_edits_logits_and_hidden_states(arch, component):
    model = tiny_model(arch)
    x = torch.randint(3, 40, (2, 6))
    base = model(input_ids=x, output_hidden_states=True)
    edited = repedit.wrap(model)
    assert edited.num_layers == model.config.num_hidden_layers
    edited.add("e", "loreft", layer=0, component=component, positions="all", config={"rank": 2, "seed": 1})
    with torch.no_grad():
        edited.interventions["e"].learned_source.bias.fill_(3.0)
    out = model(input_ids=x, output_hidden_states=True)
    assert (out.logits - base.logits).abs().max() > 1e-4
    # hidden_states[1] is the output of layer 0: it includes the edit for block_output
    if component == "block_output":
        assert (out.hidden_states[1] - base.hidden_states[1]).abs().max() > 1e-4
    assert torch.equal(out.hidden_states[0], base.hidden_states[0])
    edited.unwrap()
    assert torch.equal(model(input_ids=x).logits, base.logits)


def test_auto_detect_unknown_type(llama):
    llama.config.model_type = "mystery"
    layout = resolve_layout(llama)
    assert layout.layers == "model.layers"
    assert isinstance(layout.layer(llama, 1), nn.Module)


def test_explicit_path_and_registration(llama):
    layout = resolve_layout(llama, layers_path="model.layers")
    assert layout.num_layers(llama) == 2
    register_architecture("mystery2", ArchLayout("model.layers"))
    llama.config.model_type = "mystery2"
    try:
        assert resolve_layout(llama).layers == "model.layers"
    finally:
        ARCHITECTURES.pop("mystery2")


def test_unfindable_layers_error_names_types_and_path():
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    with pytest.raises(ValueError) as err:
        repedit.wrap(NoLayers())
    msg = str(err.value)
    assert "llama" in msg and "gpt2" in msg and "layers_path" in msg


def test_bad_layer_and_component(llama):
    edited = repedit.wrap(llama)
    with pytest.raises(ValueError, match="layer"):
        edited.add("x", "loreft", layer=7)
    with pytest.raises(ValueError, match="component"):
        edited.add("x", "loreft", layer=0, component="residual")
    with pytest.raises(ValueError, match="unknown method"):
        edited.add("x", "nosuchmethod", layer=0)
