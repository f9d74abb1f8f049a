"""PyTorch Vision Transformer of *Dive into Deep Learning*, section "Transformers for Vision".

Each class names its book counterpart. The module tree is this package's own, so checkpoint keys stay stable across
transformers releases; the file is copied next to saved weights, so it imports only torch, transformers and the config.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_vit_d2l import ViTD2LConfig

# transformers writes only the saved class into `auto_map`; with all three, both Auto classes load any saved folder.
AUTO_MAP = {
    "AutoConfig": "configuration_vit_d2l.ViTD2LConfig",
    "AutoModel": "modeling_vit_d2l.ViTD2LModel",
    "AutoModelForImageClassification": "modeling_vit_d2l.ViTD2LForImageClassification",
}


class ViTD2LPatchEmbeddings(nn.Module):
    """The book's `PatchEmbedding`: one conv with kernel = stride = patch size, then flatten to tokens."""

    def __init__(self, config: ViTD2LConfig):
        super().__init__()
        self.image_size = config.image_size
        self.num_channels = config.num_channels
        self.num_patches = config.num_patches
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values must be a 4-D tensor (batch, channels, height, width), got shape "
                f"{tuple(pixel_values.shape)}. Pass images through the model's image processor."
            )
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"Expected {self.num_channels} input channel(s) (config.num_channels), got {channels} "
                f"(pixel_values shape {tuple(pixel_values.shape)}). The image processor converts RGB/RGBA images."
            )
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"Expected {self.image_size}x{self.image_size} images (config.image_size), got {height}x{width}. "
                "Resize with the model's image processor (AutoImageProcessor.from_pretrained(...))."
            )
        # (B, C, H, W) -> (B, hidden, H/p, W/p) -> (B, num_patches, hidden)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTD2LEmbeddings(nn.Module):
    """The stem of the book's `ViT.forward`: patches, zero `<cls>` token, learnable position embedding, dropout."""

    def __init__(self, config: ViTD2LConfig):
        super().__init__()
        self.patch_embeddings = ViTD2LPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.randn(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.patch_embeddings(pixel_values.to(self.patch_embeddings.projection.weight.dtype))
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)  # (B, 1 + num_patches, hidden)
        return self.dropout(embeddings + self.position_embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """d2l's `DotProductAttention`: softmax(QK^T / sqrt(d)), dropout on the weights, times V.
    (B, heads, T, head_dim) in; the output as (B, T, heads, head_dim) and the weights out."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, heads, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(nn.functional.dropout(weights, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), weights


class ViTD2LAttention(nn.Module):
    """d2l's `MultiHeadAttention` in self-attention use: W_q, W_k, W_v, W_o, all with `bias=use_bias`."""

    def __init__(self, config: ViTD2LConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.block_dropout_prob
        self.is_causal = False
        self.W_q = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.W_k = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.W_v = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.W_o = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, _ = hidden_states.shape
        shape = (batch_size, seq_len, self.num_heads, self.head_dim)
        # (B, T, hidden) -> (B, heads, T, head_dim), d2l's transpose_qkv without folding heads into the batch
        query = self.W_q(hidden_states).view(shape).transpose(1, 2)
        key = self.W_k(hidden_states).view(shape).transpose(1, 2)
        value = self.W_v(hidden_states).view(shape).transpose(1, 2)

        # Attention weights exist only on the eager path: compute them there when asked for, whatever the model's
        # implementation (attention maps of an sdpa model need no reload).
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        output = output.reshape(batch_size, seq_len, -1)  # d2l's transpose_output
        return self.W_o(output), (weights if output_attentions else None)


class ViTD2LMLP(nn.Module):
    """The book's `ViTMLP`: dense1 -> GELU -> dropout -> dense2 -> dropout."""

    def __init__(self, config: ViTD2LConfig):
        super().__init__()
        self.dense1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.gelu = nn.GELU()
        self.dropout1 = nn.Dropout(config.block_dropout_prob)
        self.dense2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout2 = nn.Dropout(config.block_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.dense2(self.dropout1(self.gelu(self.dense1(hidden_states)))))


class ViTD2LDropPath(nn.Module):
    """Stochastic depth on a residual branch (not in the book; identity at the default rate 0)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)).bernoulli_(keep)
        return hidden_states * mask / keep


class ViTD2LLayer(GradientCheckpointingLayer):
    """The book's `ViTBlock`: pre-norm, X + attention(ln1(X)), then X + mlp(ln2(X))."""

    def __init__(self, config: ViTD2LConfig, drop_path: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTD2LAttention(config)
        self.ln2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTD2LMLP(config)
        self.drop_path = ViTD2LDropPath(drop_path)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, weights = self.attention(self.ln1(hidden_states), output_attentions=output_attentions)
        hidden_states = hidden_states + self.drop_path(attention_output)
        hidden_states = hidden_states + self.drop_path(self.mlp(self.ln2(hidden_states)))
        return hidden_states, weights


class ViTD2LEncoder(nn.Module):
    """The book's `ViT.blks`: `num_hidden_layers` blocks in sequence."""

    def __init__(self, config: ViTD2LConfig):
        super().__init__()
        # Stochastic depth grows linearly with depth, from 0 at the first block to drop_path_rate at the last (timm).
        last = max(config.num_hidden_layers - 1, 1)
        rates = [config.drop_path_rate * i / last for i in range(config.num_hidden_layers)]
        self.layer = nn.ModuleList([ViTD2LLayer(config, rate) for rate in rates])

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False, output_hidden_states: bool = False
    ) -> BaseModelOutput:
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layer:
            # Positional arguments: gradient checkpointing with use_reentrant=True needs them.
            hidden_states, weights = layer(hidden_states, output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class ViTD2LPreTrainedModel(PreTrainedModel):
    """Weight init (the book's by default), the Trainer/pipeline contract, and the full `auto_map` on save."""

    config_class = ViTD2LConfig
    base_model_prefix = "vit_d2l"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTD2LEmbeddings", "ViTD2LLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: ViTD2LConfig, attn_implementation: str | None = None):
        super().__init__(config)
        # `Model(config, attn_implementation="eager")`, checked by transformers (an unknown name is a ValueError).
        self.requested_attn_implementation = attn_implementation

    def post_init(self):
        super().post_init()
        if self.requested_attn_implementation is not None:
            self.set_attn_implementation(self.requested_attn_implementation)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        config = self.config
        if isinstance(module, ViTD2LEmbeddings):
            init.zeros_(module.cls_token)
            if config.init_style == "d2l":
                init.normal_(module.position_embeddings, mean=0.0, std=config.position_embedding_std)
            else:
                init.trunc_normal_(module.position_embeddings, std=config.initializer_range)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            if config.init_style == "d2l":
                # PyTorch's default (what the book's LazyLinear / LazyConv2d get): kaiming_uniform(a=sqrt(5)).
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:
                    fan_in = module.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                    init.uniform_(module.bias, -bound, bound)
            else:
                init.trunc_normal_(module.weight, std=config.initializer_range)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, with every Auto class in `auto_map`."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)


class ViTD2LModel(ViTD2LPreTrainedModel):
    """The book's `ViT` without its final `Linear`: stem, blocks, and the head's `LayerNorm`.

    `last_hidden_state[:, 0]` is the book's `head[0](X[:, 0])`; `pooler_output` is that `<cls>` vector, or with
    `pooling="mean"` the LayerNorm of the mean patch token (the book's exercise 2).
    """

    def __init__(self, config: ViTD2LConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation=attn_implementation)
        self.embeddings = ViTD2LEmbeddings(config)
        self.encoder = ViTD2LEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> ViTD2LPatchEmbeddings:
        return self.embeddings.patch_embeddings

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        if pixel_values is None:
            raise ValueError("pixel_values is required: a (batch, channels, height, width) float tensor.")
        if not torch.is_tensor(pixel_values):
            raise ValueError(
                f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}. "
                "Use the image processor with return_tensors='pt'."
            )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        embeddings = self.embeddings(pixel_values)
        encoded = self.encoder(
            embeddings, output_attentions=bool(output_attentions), output_hidden_states=bool(output_hidden_states)
        )
        hidden = encoded.last_hidden_state
        sequence_output = self.layernorm(hidden)
        if self.config.pooling == "mean":
            pooled_output = self.layernorm(hidden[:, 1:].mean(dim=1))
        else:
            pooled_output = sequence_output[:, 0]
        if not return_dict:
            extra = tuple(v for v in (encoded.hidden_states, encoded.attentions) if v is not None)
            return (sequence_output, pooled_output) + extra
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


class ViTD2LForImageClassification(ViTD2LPreTrainedModel):
    """The book's `ViT`: `ViTD2LModel` plus the head's `Linear`; the loss follows `config.problem_type` (the book's
    cross-entropy for integer labels), as in transformers' ViT."""

    def __init__(self, config: ViTD2LConfig, attn_implementation: str | None = None):
        super().__init__(config, attn_implementation=attn_implementation)
        self.num_labels = config.num_labels
        self.vit_d2l = ViTD2LModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> ViTD2LPatchEmbeddings:
        return self.vit_d2l.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.vit_d2l(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        if self.config.test_time_flip and not self.training:
            mirrored = self.vit_d2l(pixel_values.flip(-1), return_dict=True).pooler_output
            logits = (logits + self.classifier(mirrored)) / 2
        loss = None
        if labels is not None:
            try:
                loss = self.loss_function(labels, logits, self.config, **kwargs)
            except IndexError:
                # CPU cross-entropy on a class index outside [0, num_labels). Checking the range up front would
                # synchronise with the GPU on every step, where the same mistake is a device-side assert instead.
                raise ValueError(
                    f"labels must lie in [0, {self.num_labels - 1}] (config.num_labels={self.num_labels}); "
                    "a label outside that range was given."
                ) from None
        if not return_dict:
            output = (logits,) + tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["ViTD2LPreTrainedModel", "ViTD2LModel", "ViTD2LForImageClassification"]
