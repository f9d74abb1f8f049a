"""Attention maps: `<cls>` attention per block and head, attention rollout, and the figure `predict` writes."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hf_vit_d2l import ViTD2LConfig, ViTD2LForImageClassification, ViTD2LImageProcessor
from hf_vit_d2l.attention_maps import attention_rollout, compute_attention_maps, save_attention_figure

# Odd sizes on purpose (ModelTester style): 30 px, patch 6 -> a 5x5 grid, 26 tokens.
TINY = {"image_size": 30, "patch_size": 6, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}


def tiny_model(pooling="cls", num_hidden_layers=2, seed=0):
    torch.manual_seed(seed)
    return ViTD2LForImageClassification(
        ViTD2LConfig(**TINY, num_hidden_layers=num_hidden_layers, pooling=pooling)
    ).eval()


class HandMadeAttention(torch.nn.Module):
    """Stands in for a model: returns the given attention weights, whatever the input."""

    def __init__(self, attentions, pooling="cls"):
        super().__init__()
        self.attentions = attentions
        self.config = SimpleNamespace(pooling=pooling)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    def forward(self, pixel_values, output_attentions=False):
        return SimpleNamespace(attentions=self.attentions)


def uniform(batch=2, heads=3, tokens=26, layers=3):
    return [torch.full((batch, heads, tokens, tokens), 1 / tokens) for _ in range(layers)]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_shapes_and_normalisation(pooling):
    model = tiny_model(pooling)
    pixel_values = torch.rand(3, 1, 30, 30)
    maps = compute_attention_maps(model, pixel_values)
    assert maps.block_attentions.shape == (3, 2, 4, 5, 5)  # batch, blocks, heads, grid, grid
    assert maps.rollout.shape == (3, 30, 30)
    assert maps.query == ("<cls>" if pooling == "cls" else "mean of patches")
    torch.testing.assert_close(maps.rollout.sum(dim=(1, 2)), torch.ones(3))
    assert (maps.rollout >= 0).all()
    # Every attention row of the model sums to 1, so the query's weights on the patches sum to at most 1, and to
    # exactly 1 once the weight on the <cls> token is added back.
    with torch.no_grad():
        attentions = model(pixel_values, output_attentions=True).attentions
    for block, weights in enumerate(attentions):
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 26))
        on_patches = maps.block_attentions[:, block].sum(dim=(-1, -2))
        on_cls = weights[:, :, 0, 0] if pooling == "cls" else weights[:, :, 1:, 0].mean(-1)
        torch.testing.assert_close(on_patches + on_cls, torch.ones(3, 4))


@pytest.mark.parametrize("query", ["<cls>", "mean of patches"])
def test_uniform_attention_gives_a_uniform_rollout(query):
    flow = attention_rollout(uniform(), query)
    torch.testing.assert_close(flow, torch.full((2, 25), 1 / 25))
    maps = compute_attention_maps(HandMadeAttention(uniform()), torch.zeros(2, 1, 30, 30))
    torch.testing.assert_close(maps.rollout, torch.full((2, 30, 30), 1 / 900))


def test_rollout_matches_a_hand_computation():
    torch.manual_seed(0)
    attentions = [torch.rand(1, 2, 5, 5).softmax(-1) for _ in range(3)]
    mixed = [0.5 * a[0].mean(0) + 0.5 * torch.eye(5) for a in attentions]  # rows of A + I sum to 2
    product = mixed[2] @ mixed[1] @ mixed[0]
    torch.testing.assert_close(product.sum(-1), torch.ones(5))
    expected = product[0, 1:] / product[0, 1:].sum()
    torch.testing.assert_close(attention_rollout(attentions)[0], expected)
    expected_mean = product[1:, 1:].mean(0) / product[1:, 1:].mean(0).sum()
    torch.testing.assert_close(attention_rollout(attentions, "mean of patches")[0], expected_mean)


def test_cls_attending_to_one_patch_highlights_that_patch():
    patch = 13  # grid row 2, column 3 of the 5x5 grid: pixels [12, 18) x [18, 24)
    attentions = uniform(batch=1)
    for weights in attentions:
        weights[:, :, 0] = 0
        weights[:, :, 0, 1 + patch] = 1
    flow = attention_rollout(attentions)
    assert int(flow.argmax()) == patch
    maps = compute_attention_maps(HandMadeAttention(attentions), torch.zeros(1, 1, 30, 30))
    rollout = maps.rollout[0]
    row, column = divmod(int(rollout.argmax()), 30)
    assert 12 <= row < 18
    assert 18 <= column < 24
    assert rollout[12:18, 18:24].mean() > 3 * rollout.mean()
    torch.testing.assert_close(maps.block_attentions[0, :, :, 2, 3], torch.ones(3, 3))


def test_attention_figure(tmp_path):
    model = tiny_model()
    processor = ViTD2LImageProcessor(size={"height": 30, "width": 30})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 33), dtype=np.uint8))
    labels = save_attention_figure(image, model, processor, tmp_path / "figure.png", top_k=3)
    with torch.no_grad():
        probabilities = model(**processor(images=image, return_tensors="pt")).logits.softmax(-1)[0]
    values, indices = probabilities.topk(3)
    assert [name for name, _ in labels] == [model.config.id2label[int(i)] for i in indices]
    np.testing.assert_allclose([p for _, p in labels], values.numpy(), rtol=1e-6)
    with Image.open(tmp_path / "figure.png") as png:
        assert png.format == "PNG"
        assert png.size == (900, 320)


def garment_mass(model, images: np.ndarray) -> float:
    """Mean share of the rollout that falls on the garment (non-zero pixels) of real 28x28 images."""
    pixel_values = torch.tensor(images, dtype=torch.float32)[:, None] / 255
    rollout = compute_attention_maps(model.eval(), pixel_values).rollout
    return float((rollout * torch.tensor(images > 0)).sum(dim=(1, 2)).mean())


def test_training_moves_the_rollout_off_the_garment(fashion_mnist_arrays):
    """A mean-pooling model at 28 px, trained for seconds on 1,000 real images, against the same model untrained.

    The untrained model's rollout is nearly uniform, so its garment share is about the garment's share of the
    pixels. One might expect training to move attention onto the garment; on real images it moves it the other
    way, onto the background patches around it, and does so for every seed tried (docs/publishing.md#attention-maps).
    """
    train_images, train_labels = (array[:1000] for array in fashion_mnist_arrays["train"])
    test_images, test_labels = (array[:100] for array in fashion_mnist_arrays["test"])
    torch.manual_seed(0)
    config = ViTD2LConfig(
        image_size=28,
        patch_size=7,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        pooling="mean",
        position_embedding_std=0.02,
    )
    model = ViTD2LForImageClassification(config)
    untrained = garment_mass(model, test_images)
    assert abs(untrained - (test_images > 0).mean()) < 0.02
    pixel_values = torch.tensor(train_images, dtype=torch.float32)[:, None] / 255
    labels = torch.tensor(train_labels, dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(3):
        for start in range(0, len(labels), 64):
            loss = model(pixel_values=pixel_values[start : start + 64], labels=labels[start : start + 64]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(pixel_values=torch.tensor(test_images, dtype=torch.float32)[:, None] / 255).logits
    assert (predictions.argmax(-1).numpy() == test_labels).mean() > 0.5  # it did learn (chance: 0.1)
    assert garment_mass(model, test_images) < untrained - 0.01
