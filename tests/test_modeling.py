"""ViTD2LModel / ViTD2LForImageClassification in transformers' ModelTester pattern, with tiny odd dimensions."""

import copy
import math
import warnings

import pytest
import torch
from d2l_reference import ViT
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from hf_vit_d2l import FASHION_MNIST_LABELS, ViTD2LConfig, ViTD2LForImageClassification, ViTD2LModel


class ViTD2LModelTester:
    """Sizes as transformers' ViTModelTester: batch 13, image 30, patch 3, hidden 32, 4 heads, MLP 37, 2 layers."""

    batch_size = 13
    image_size = 30
    patch_size = 3
    num_channels = 1
    hidden_size = 32
    num_attention_heads = 4
    intermediate_size = 37
    num_hidden_layers = 2
    num_labels = 10

    @property
    def seq_length(self):
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + <cls>

    def get_config(self, **overrides):
        kwargs = {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
        }
        kwargs.update(overrides)
        return ViTD2LConfig(**kwargs)

    def pixel_values(self, batch_size=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        shape = (batch_size or self.batch_size, self.num_channels, self.image_size, self.image_size)
        return torch.rand(shape, generator=generator)

    def labels(self, seed=0):
        return torch.randint(0, self.num_labels, (self.batch_size,), generator=torch.Generator().manual_seed(seed))


tester = ViTD2LModelTester()


def make(cls=ViTD2LForImageClassification, seed=0, attn_implementation=None, **overrides):
    torch.manual_seed(seed)
    return cls(tester.get_config(**overrides), attn_implementation=attn_implementation).eval()


# ---------------------------------------------------------------------------------------------------- outputs


def test_base_model_output_shapes():
    model = make(ViTD2LModel)
    with torch.no_grad():
        out = model(tester.pixel_values(), output_hidden_states=True, output_attentions=True)
    assert isinstance(out, BaseModelOutputWithPooling)
    assert out.last_hidden_state.shape == (tester.batch_size, tester.seq_length, tester.hidden_size)
    assert out.pooler_output.shape == (tester.batch_size, tester.hidden_size)
    assert len(out.hidden_states) == tester.num_hidden_layers + 1
    shapes = [h.shape for h in out.hidden_states]
    assert all(shape == (tester.batch_size, tester.seq_length, tester.hidden_size) for shape in shapes), shapes
    assert len(out.attentions) == tester.num_hidden_layers
    expected = (tester.batch_size, tester.num_attention_heads, tester.seq_length, tester.seq_length)
    assert all(a.shape == expected for a in out.attentions), [a.shape for a in out.attentions]
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(expected[:-1]), atol=1e-5)  # softmax rows
    # pooler_output is the <cls> vector after the head LayerNorm.
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])


def test_classifier_output_shapes_and_defaults():
    model = make()
    with torch.no_grad():
        out = model(tester.pixel_values())
    assert isinstance(out, ImageClassifierOutput)
    assert out.logits.shape == (tester.batch_size, tester.num_labels)
    assert out.loss is None
    assert out.hidden_states is None
    assert out.attentions is None


def test_return_dict_false_gives_tuples():
    model = make()
    pixel_values, labels = tester.pixel_values(), tester.labels()
    with torch.no_grad():
        as_dict = model(pixel_values, labels=labels, output_hidden_states=True, output_attentions=True)
        as_tuple = model(
            pixel_values, labels=labels, output_hidden_states=True, output_attentions=True, return_dict=False
        )
        plain = model(pixel_values, return_dict=False)
        base = model.vit_d2l(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert len(as_tuple) == 4
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert len(as_tuple[2]) == tester.num_hidden_layers + 1
    assert len(as_tuple[3]) == tester.num_hidden_layers
    assert isinstance(plain, tuple)
    assert len(plain) == 1
    torch.testing.assert_close(plain[0], as_dict.logits)
    assert isinstance(base, tuple)
    assert len(base) == 2
    assert base[1].shape == (tester.batch_size, tester.hidden_size)


def test_get_input_embeddings_is_the_patch_embedding():
    model = make()
    embeddings = model.get_input_embeddings()
    assert embeddings is model.vit_d2l.embeddings.patch_embeddings
    assert isinstance(embeddings.projection, nn.Conv2d)
    assert embeddings.projection.kernel_size == (tester.patch_size, tester.patch_size)
    assert embeddings.projection.stride == (tester.patch_size, tester.patch_size)


def test_determinism_in_eval_and_dropout_in_train():
    model = make()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        first, second = model(pixel_values).logits, model(pixel_values).logits
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(pixel_values).logits, model(pixel_values).logits)


def test_batching_equivalence():
    model = make()
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        batched = model(pixel_values).logits
        for i in (0, 6, tester.batch_size - 1):
            alone = model(pixel_values[i : i + 1]).logits
            torch.testing.assert_close(alone[0], batched[i], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_eager_and_sdpa_agree(qkv_bias):
    eager = make(attn_implementation="eager", qkv_bias=qkv_bias)
    sdpa = make(attn_implementation="sdpa", qkv_bias=qkv_bias)
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config._attn_implementation == "eager"
    assert sdpa.config._attn_implementation == "sdpa"
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        out_eager = eager(pixel_values, output_hidden_states=True)
        out_sdpa = sdpa(pixel_values, output_hidden_states=True)
        # output_attentions needs the weights, so sdpa computes that call on the eager path: same numbers.
        with_weights = sdpa(pixel_values, output_attentions=True)
        eager_weights = eager(pixel_values, output_attentions=True)
    torch.testing.assert_close(out_sdpa.logits, out_eager.logits, atol=1e-5, rtol=0)
    for a, b in zip(out_sdpa.hidden_states, out_eager.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_weights.logits, out_eager.logits, atol=1e-5, rtol=0)
    for a, b in zip(with_weights.attentions, eager_weights.attentions):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_default_attention_is_sdpa_and_set_attn_implementation_switches():
    model = make()
    assert model.config._attn_implementation == "sdpa"
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        before = model(pixel_values).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        torch.testing.assert_close(model(pixel_values).logits, before, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):  # with dropout: the recomputed forward must draw the same masks
        model = make(embedding_dropout_prob=0.1, block_dropout_prob=0.2)
        model.train()
        torch.manual_seed(1)
        if checkpointing:
            with warnings.catch_warnings():  # deprecated for activation_checkpointing_enable in later 5.x releases
                warnings.simplefilter("ignore", FutureWarning)
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            flags = [layer.gradient_checkpointing for layer in model.vit_d2l.encoder.layer]
            assert all(flags), flags
        out = model(tester.pixel_values(), labels=tester.labels())
        out.loss.backward()
        return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, plain = grads(False)
    loss_ckpt, ckpt = grads(True)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------------- loss, labels


def test_loss_is_cross_entropy():
    model = make()
    labels = tester.labels()
    with torch.no_grad():
        out = model(tester.pixel_values(), labels=labels)
    expected = nn.functional.cross_entropy(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    assert out.loss.item() > 0


@pytest.mark.parametrize("bad", [[10], [-1], [100]])
def test_labels_out_of_range(bad):
    model = make()
    labels = tester.labels()
    labels[3] = bad[0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\]"):
        model(tester.pixel_values(), labels=labels)


def test_labels_of_wrong_shape():
    model = make()
    with pytest.raises(ValueError, match=r"batch_size \(13\) to match target batch_size \(12\)"):
        model(tester.pixel_values(), labels=torch.zeros(12, dtype=torch.long))


def test_problem_types_as_transformers_vit():
    """Integer labels: cross-entropy; float multi-hot targets: BCE with logits; one output: MSE (regression)."""
    model = make()
    with torch.no_grad():
        targets = (torch.rand(tester.batch_size, tester.num_labels) > 0.5).float()
        out = model(tester.pixel_values(), labels=targets)
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(out.loss, nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    regression = make(num_labels=1, id2label={0: "value"})
    with torch.no_grad():
        targets = torch.rand(tester.batch_size)
        out = regression(tester.pixel_values(), labels=targets)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, nn.functional.mse_loss(out.logits.squeeze(), targets))


# ---------------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("shape", "expected", "got"),
    [
        ((2, 3, 30, 30), "1 input channel", "got 3"),
        ((2, 1, 32, 32), "30x30", "got 32x32"),
        ((2, 1, 30, 28), "30x30", "got 30x28"),
        ((1, 30, 30), "4-D tensor", "(1, 30, 30)"),
    ],
)
def test_bad_pixel_values_raise_value_error_with_expected_and_got(shape, expected, got):
    model = make()
    with pytest.raises(ValueError) as info:
        model(torch.rand(shape))
    assert expected in str(info.value)
    assert got in str(info.value)


def test_missing_or_non_tensor_pixel_values():
    model = make()
    with pytest.raises(ValueError, match="pixel_values is required"):
        model()
    with pytest.raises(ValueError, match="torch.Tensor"):
        model(tester.pixel_values().numpy())


# ---------------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_identical_logits(tmp_path):
    model = make(seed=3)
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        before = model(pixel_values).logits
    model.save_pretrained(tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in names
    assert "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    # Loading twice with different global seeds: any re-initialisation of loaded weights would show.
    for seed in (0, 1):
        torch.manual_seed(seed)
        reloaded = ViTD2LForImageClassification.from_pretrained(tmp_path).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(pixel_values).logits, before, rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_save_twice_into_the_same_folder_overwrites(tmp_path):
    make(seed=1).save_pretrained(tmp_path)
    second = make(seed=2)
    second.save_pretrained(tmp_path)
    reloaded = ViTD2LForImageClassification.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(second.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_classifier_checkpoint_loads_into_base_model_and_back(tmp_path):
    classifier = make(seed=4)
    classifier.save_pretrained(tmp_path / "clf")
    base = ViTD2LModel.from_pretrained(tmp_path / "clf")
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, classifier.vit_d2l.state_dict()[name]), name
    base.save_pretrained(tmp_path / "base")
    again = ViTD2LForImageClassification.from_pretrained(tmp_path / "base")
    for name, tensor in again.vit_d2l.state_dict().items():
        assert torch.equal(tensor, classifier.vit_d2l.state_dict()[name]), name
    assert again.classifier.weight.shape == (10, tester.hidden_size)


# ---------------------------------------------------------------------------------------------------- sizes, init


def test_book_config_has_6457866_parameters():
    model = ViTD2LForImageClassification(ViTD2LConfig())
    assert sum(p.numel() for p in model.parameters()) == 6_457_866
    book = ViT(96, 16, 512, 2048, 8, 2, 0.1, 0.1)
    assert sum(p.numel() for p in book.parameters()) == 6_457_866
    with_bias = ViTD2LForImageClassification(ViTD2LConfig(use_bias=True))
    assert sum(p.numel() for p in with_bias.parameters()) == 6_457_866 + 2 * 4 * 512


def test_d2l_init_cls_zero_and_position_embedding_std_one():
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(ViTD2LConfig())
    embeddings = model.vit_d2l.embeddings
    assert torch.count_nonzero(embeddings.cls_token) == 0
    std = embeddings.position_embeddings.std().item()
    assert abs(std - 1.0) < 0.03, std  # 37 * 512 draws of randn
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1), name
            assert torch.all(module.bias == 0), name


def test_hf_init_style():
    torch.manual_seed(0)
    model = ViTD2LForImageClassification(ViTD2LConfig(init_style="hf", position_embedding_std=0.02))
    embeddings = model.vit_d2l.embeddings
    assert torch.count_nonzero(embeddings.cls_token) == 0
    assert abs(embeddings.position_embeddings.std().item() - 0.02) < 0.002
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert abs(module.weight.std().item() - 0.02) < 0.003, name
            assert module.bias is None or torch.count_nonzero(module.bias) == 0, name


def test_d2l_init_statistics_match_the_book_module():
    """Per-layer weight/bias std of our book init equals that of the book's own modules (PyTorch default init)."""
    torch.manual_seed(0)
    ours = dict(ViTD2LForImageClassification(ViTD2LConfig()).named_parameters())
    torch.manual_seed(1)
    book = dict(ViT(96, 16, 512, 2048, 8, 2, 0.1, 0.1).named_parameters())
    pairs = {
        "vit_d2l.embeddings.patch_embeddings.projection.weight": "patch_embedding.conv.weight",
        "vit_d2l.embeddings.patch_embeddings.projection.bias": "patch_embedding.conv.bias",
        "vit_d2l.embeddings.position_embeddings": "pos_embedding",
        "classifier.weight": "head.1.weight",
        "classifier.bias": "head.1.bias",
    }
    for i in range(2):
        for name in ("attention.W_q", "attention.W_k", "attention.W_v", "attention.W_o", "mlp.dense1", "mlp.dense2"):
            pairs[f"vit_d2l.encoder.layer.{i}.{name}.weight"] = f"blks.{i}.{name}.weight"
        for name in ("mlp.dense1", "mlp.dense2"):
            pairs[f"vit_d2l.encoder.layer.{i}.{name}.bias"] = f"blks.{i}.{name}.bias"
    for our_name, book_name in pairs.items():
        a, b = ours[our_name], book[book_name]
        assert a.shape == b.shape, our_name
        if a.numel() < 256:  # too few draws for a 5% std comparison: check the Uniform(-1/sqrt(fan_in), ..) bound
            assert a.abs().max().item() <= 1 / math.sqrt(512), (our_name, a.abs().max().item())
            assert a.std().item() > 0.25 / math.sqrt(512), (our_name, a.std().item())
            continue
        assert math.isclose(a.std().item(), b.std().item(), rel_tol=0.05), (our_name, a.std().item(), b.std().item())
        assert abs(a.mean().item()) < 4 * b.std().item() / math.sqrt(b.numel()) + 1e-3, our_name
        # Uniform(-bound, bound) init: the extremes match too.
        if our_name.endswith(("weight", "bias")) and "position" not in our_name:
            assert math.isclose(a.abs().max().item(), b.abs().max().item(), rel_tol=0.05), our_name


# ---------------------------------------------------------------------------------------------------- variants


def test_mean_pooling_path():
    model = make(pooling="mean")
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        out = model.vit_d2l(pixel_values, output_hidden_states=True)
        logits = model(pixel_values).logits
    encoder_output = out.hidden_states[-1]  # before the head LayerNorm
    expected_pooled = model.vit_d2l.layernorm(encoder_output[:, 1:].mean(dim=1))
    torch.testing.assert_close(out.pooler_output, expected_pooled)
    torch.testing.assert_close(logits, model.classifier(expected_pooled))
    cls_model = make(pooling="cls")
    cls_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(cls_model(pixel_values).logits, logits)


def test_drop_path_rate():
    model = make(drop_path_rate=0.5, embedding_dropout_prob=0.0, block_dropout_prob=0.0)
    rates = [layer.drop_path.drop_prob for layer in model.vit_d2l.encoder.layer]
    assert rates == [0.0, 0.5]  # linear in depth, from 0
    reference = make(drop_path_rate=0.0, embedding_dropout_prob=0.0, block_dropout_prob=0.0)
    reference.load_state_dict(model.state_dict())
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, reference(pixel_values).logits, rtol=0, atol=0)
        model.train()
        torch.manual_seed(0)
        trained = [model(pixel_values).logits for _ in range(4)]
    assert any(not torch.allclose(trained[0], t) for t in trained[1:]), "drop path changed no training pass"
    # Per-sample: a dropped residual branch is all-or-nothing for each sample, and survivors are scaled by 1/keep.
    drop = model.vit_d2l.encoder.layer[1].drop_path
    torch.manual_seed(0)
    out = drop(torch.ones(1000, 3, 4))
    per_sample = out[:, 0, 0]
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert torch.all(out == per_sample[:, None, None])
    assert 0.4 < (per_sample == 0).float().mean().item() < 0.6


def test_test_time_flip_averages_the_mirror_images_logits_in_eval_only(tmp_path):
    no_dropout = {"embedding_dropout_prob": 0.0, "block_dropout_prob": 0.0}
    model = make(test_time_flip=True, pooling="mean", **no_dropout)
    plain = make(test_time_flip=False, pooling="mean", **no_dropout)
    plain.load_state_dict(model.state_dict())
    pixel_values = tester.pixel_values()
    pixel_values[:, :, :, : tester.image_size // 2] = 0  # asymmetric, so that the mirror image gives other logits
    with torch.no_grad():
        mirrored = plain(pixel_values.flip(-1)).logits
        unflipped = plain(pixel_values, output_hidden_states=True)
        out = model(pixel_values, labels=tester.labels(), output_hidden_states=True)
    assert not torch.allclose(mirrored, unflipped.logits, atol=1e-3)
    torch.testing.assert_close(out.logits, (unflipped.logits + mirrored) / 2)
    torch.testing.assert_close(out.loss, nn.functional.cross_entropy(out.logits, tester.labels()))
    for got, expected in zip(out.hidden_states, unflipped.hidden_states, strict=True):  # the unflipped image's
        torch.testing.assert_close(got, expected)
    # Training is unchanged: one forward pass, the plain model's logits.
    model.train(), plain.train()
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values).logits, plain(pixel_values).logits, rtol=0, atol=0)
    model.eval().save_pretrained(tmp_path)
    loaded = ViTD2LForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.test_time_flip is True
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, out.logits)
    with pytest.raises(StrictDataclassFieldValidationError, match="test_time_flip' expected bool, got str"):
        ViTD2LConfig(test_time_flip="yes")
    assert ViTD2LConfig().test_time_flip is False  # the book's model: one pass


def test_multi_channel_and_other_label_counts():
    model = make(num_channels=3, num_labels=4, id2label={i: f"c{i}" for i in range(4)})
    with torch.no_grad():
        out = model(torch.rand(2, 3, tester.image_size, tester.image_size))
    assert out.logits.shape == (2, 4)


def test_id2label_of_the_model_is_fashion_mnist():
    model = make()
    assert [model.config.id2label[i] for i in range(10)] == FASHION_MNIST_LABELS


def test_model_matches_the_book_module_forward():
    """Same weights in the book's ViT and ours: equal logits (the converter tests cover all sizes)."""
    from hf_vit_d2l import from_d2l_state_dict

    torch.manual_seed(0)
    book = ViT(30, 3, 32, 37, 4, 2, 0.1, 0.1).eval()
    model = from_d2l_state_dict(copy.deepcopy(book.state_dict()), {"num_heads": 4})
    with torch.no_grad():
        torch.testing.assert_close(model(tester.pixel_values()).logits, book(tester.pixel_values()), atol=1e-5, rtol=0)
