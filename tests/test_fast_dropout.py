"""The faster CPU dropout that --fast_dropout swaps in: the same distribution of masks, training only."""

import inspect
import math

import pytest
import torch
from torch import nn

from hf_vit_d2l import ViTD2LForImageClassification, get_preset, modeling_vit_d2l
from hf_vit_d2l.fast_dropout import FastDropout, fast_dropout, replace_dropout_modules


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_drops_iid_bernoulli_and_scales_the_rest(p):
    x = torch.ones(4_000_000, requires_grad=True)
    torch.manual_seed(0)
    y = fast_dropout(x, p, training=True)
    dropped = y == 0
    assert torch.equal(y[~dropped], torch.full_like(y[~dropped], 1 / (1 - p)))
    for part in dropped.chunk(4):  # the rate p at the start and at the end of the tensor, within 5 sigma
        assert abs(part.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / part.numel())
    both = (dropped[1:] & dropped[:-1]).float().mean().item()  # neighbours drop independently
    assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / x.numel())
    y.backward(torch.full_like(y, 3.0))
    assert torch.equal(x.grad, 3.0 * y.detach())
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x.detach(), p, training=True), y)  # the seed fixes the mask
    assert torch.equal(fast_dropout(x.detach(), p, training=False), x.detach())


def test_fast_dropout_of_a_few_elements_has_the_binomial_counts():
    torch.manual_seed(0)
    draws = torch.stack([fast_dropout(torch.ones(3), 0.1, training=True) == 0 for _ in range(20_000)])
    counts = torch.bincount(draws.sum(1), minlength=4).float() / len(draws)
    expected = torch.tensor([math.comb(3, k) * 0.1**k * 0.9 ** (3 - k) for k in range(4)])
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(draws.float().mean(0), torch.full((3,), 0.1), atol=0.01, rtol=0)


def test_fast_dropout_is_plain_dropout_above_one_half():
    x = torch.randn(1000)
    torch.manual_seed(0)
    expected = nn.functional.dropout(x, 0.7, training=True)
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x, 0.7, training=True), expected)


def test_replace_dropout_modules_swaps_every_dropout_and_keeps_eval_logits():
    config = get_preset("vit_d2l_fashion_mnist", hidden_size=32, intermediate_size=37, num_heads=4, img_size=32)
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(config).eval()
    pixel_values = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = model(pixel_values).logits
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    assert replace_dropout_modules(model) == len(dropouts) > 0, "every nn.Dropout is counted"
    assert not [m for m in model.modules() if type(m) is nn.Dropout], "no nn.Dropout is left"
    assert [m.p for m in model.modules() if isinstance(m, FastDropout)] == [m.p for m in dropouts], "same rates"
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, before, rtol=0, atol=0)


def test_the_shipped_model_file_has_only_the_books_dropout(tmp_path):
    source = inspect.getsource(modeling_vit_d2l)
    assert "fast_dropout" not in source, "modeling_vit_d2l.py mentions fast_dropout"
    assert "FastDropout" not in source, "modeling_vit_d2l.py mentions FastDropout"
    config = get_preset("vit_d2l_fashion_mnist", hidden_size=32, intermediate_size=37, num_heads=4, img_size=32)
    model = ViTD2LForImageClassification(config)
    replace_dropout_modules(model)
    model.save_pretrained(tmp_path)
    shipped = (tmp_path / "modeling_vit_d2l.py").read_text()
    assert "FastDropout" not in shipped, "the swapped modules reached the saved code file"
    assert "nn.Dropout(" in shipped, "the saved code file builds nn.Dropout"
