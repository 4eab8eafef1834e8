"""Text backbones: a small TextCNN and a 2-layer transformer encoder trainable from scratch on a
CPU, and any Hugging Face `transformers` encoder as `hf:<model type>` (`hf:bert`, `hf:distilbert`,
`hf:roberta`, ...: the type's default configuration) or `hf:<local folder>` (the config.json
there), randomly initialised; pretrained weights come only from a local folder given with
--student-init / --teacher-init (`from_pretrained(folder, local_files_only=True)`).

They read a text modality's 2 x L tensor (token ids, attention mask; cmkd_bench.data.text) and return
the same `ModelOutput` as every other backbone, through the same `FeatureModel` hooks:
- stages: after each block (convolution block, transformer layer), the masked mean over the real
  tokens of its output, as a D x 1 x 1 map. Token positions have no counterpart in an image (or
  another sentence), so a text stage carries no positions: map-based methods compare it with an
  image stage through their usual resizing (pooling the image map to 1 x 1, or spreading the text
  vector over the image's positions), and methods that need positions (attention transfer)
  decline in one line;
- feature / feature_post: the masked token mean of the last block before / after its final
  activation (TextCNN: ReLU; transformers end in a norm, so both are the same vector);
- logits: a linear head on feature_post.
Registered with `takes_tokens=True`: the harness passes the modality's `TokenSpec` (vocabulary
size, padding id, length) and refuses a text backbone on another modality, or another backbone
on a text modality, in one line.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.text import TokenSpec, require_transformers
from ..errors import UserError
from ..registry import BACKBONES, Entry
from .backbones import _described
from .features import FeatureModel


def split_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """B x 2 x L -> (ids, mask as float); the first position always counts, so that no row is empty
    (real rows start with [CLS]; only the all-zero dummy batch of `describe` lacks it)."""
    ids, mask = x[:, 0].long(), x[:, 1].float()
    mask = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
    return ids, mask


def masked_mean(h: Tensor, mask: Tensor, channels_first: bool) -> Tensor:
    """The mean over real tokens: h is B x D x L (channels_first) or B x L x D; mask B x L."""
    weights = mask / mask.sum(dim=1, keepdim=True)
    return torch.einsum("bdl,bl->bd" if channels_first else "bld,bl->bd", h, weights.to(h.dtype))


def _token_shape(name: str, input_shape: tuple[int, ...], tokens: TokenSpec | None) -> int:
    if tokens is None or len(input_shape) != 2 or input_shape[0] != 2:
        raise UserError(f"backbone {name!r} reads token ids (a text modality), but this modality has shape "
                        f"{tuple(input_shape)}; use it on a text modality")
    return int(input_shape[1])


class TextCNN(nn.Module):
    """Embedding, then `stages` blocks of Conv1d(k) - BatchNorm - ReLU over the token axis (padded
    positions zeroed after each block), masked mean pooling, a linear head."""

    def __init__(self, vocab_size: int, pad_id: int, num_classes: int, embed_dim: int, width: int, stages: int,
                 kernel: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        blocks, cin = [], embed_dim
        for _ in range(stages):
            blocks.append(nn.Sequential(OrderedDict(conv=nn.Conv1d(cin, width, kernel, padding=kernel // 2, bias=False),
                                                    bn=nn.BatchNorm1d(width), act=nn.ReLU())))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.taps = nn.ModuleList(nn.Identity() for _ in range(stages))  # stage outputs (hooked by name)
        self.pre = nn.Identity()  # its input: the pooled pre-activation feature
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = split_tokens(x)
        keep = mask[:, None, :]
        h = self.embedding(ids).transpose(1, 2) * keep
        for i, block in enumerate(self.blocks):
            pre = block.bn(block.conv(h))
            h = block.act(pre) * keep
            if i == len(self.blocks) - 1:
                self.pre(masked_mean(pre, mask, channels_first=True))
            self.taps[i](masked_mean(h, mask, channels_first=True)[:, :, None, None])
        return self.fc(masked_mean(h, mask, channels_first=True))


@BACKBONES.register("text-cnn", tasks=("classification",), takes_tokens=True,
                    description="small fast TextCNN for token ids (word embedding, three Conv1d-BN-ReLU blocks)")
def text_cnn(input_shape: tuple[int, ...], num_classes: int, *, tokens: TokenSpec, embed_dim: int = 64,
             width: int = 64, stages: int = 3, kernel: int = 3) -> FeatureModel:
    _token_shape("text-cnn", input_shape, tokens)
    if min(embed_dim, width, stages, kernel) < 1:
        raise UserError(f"text-cnn needs embed_dim, width, stages and kernel >= 1, got {embed_dim}, {width}, {stages}, {kernel}")
    net = TextCNN(tokens.vocab_size, tokens.pad_id, num_classes, embed_dim, width, stages, kernel)
    model = FeatureModel(net, "text-cnn", num_classes, [f"taps.{i}" for i in range(stages)], head_module="fc",
                         preact_module="pre")
    return _described(model, input_shape)


class TextTransformer(nn.Module):
    """Token and learned position embeddings, pre-norm transformer encoder layers (padding masked
    out of attention), a final LayerNorm, masked mean pooling, a linear head."""

    def __init__(self, vocab_size: int, pad_id: int, length: int, num_classes: int, dim: int, layers: int, heads: int,
                 ff: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.position = nn.Parameter(torch.zeros(1, length, dim))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
                                    for _ in range(layers))
        self.taps = nn.ModuleList(nn.Identity() for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = split_tokens(x)
        h = self.embedding(ids) + self.position[:, :ids.shape[1]]
        padding = mask == 0
        for i, layer in enumerate(self.layers):
            h = layer(h, src_key_padding_mask=padding)
            h = h * mask[:, :, None]
            out = self.norm(h) if i == len(self.layers) - 1 else h
            self.taps[i](masked_mean(out, mask, channels_first=False)[:, :, None, None])
        return self.fc(masked_mean(self.norm(h), mask, channels_first=False))


@BACKBONES.register("text-transformer", tasks=("classification",), takes_tokens=True,
                    description="small transformer encoder for token ids (2 pre-norm layers, width 64, 4 heads)")
def text_transformer(input_shape: tuple[int, ...], num_classes: int, *, tokens: TokenSpec, dim: int = 64,
                     layers: int = 2, heads: int = 4, ff: int = 128, dropout: float = 0.1) -> FeatureModel:
    length = _token_shape("text-transformer", input_shape, tokens)
    if min(dim, layers, heads, ff) < 1 or dim % heads or not 0 <= dropout < 1:
        raise UserError(f"text-transformer needs dim, layers, heads, ff >= 1, dim divisible by heads and dropout in "
                        f"[0, 1), got dim={dim}, layers={layers}, heads={heads}, ff={ff}, dropout={dropout}")
    net = TextTransformer(tokens.vocab_size, tokens.pad_id, length, num_classes, dim, layers, heads, ff, dropout)
    model = FeatureModel(net, "text-transformer", num_classes, [f"taps.{i}" for i in range(layers)], head_module="fc")
    return _described(model, input_shape)


# -- Hugging Face encoders ---------------------------------------------------------------------
class HFEncoder(nn.Module):
    """A transformers encoder (`AutoModel`, no pooling layer) run with the attention mask and
    `output_hidden_states=True`; each layer's hidden states, mean-pooled over real tokens, pass
    through a tap; the last layer's pooled state feeds a linear head. The pretrained pooler
    (BERT's tanh layer on [CLS]) is not used: masked mean pooling works for every encoder type."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        layers = int(encoder.config.num_hidden_layers if hasattr(encoder.config, "num_hidden_layers")
                     else encoder.config.n_layers)
        self.taps = nn.ModuleList(nn.Identity() for _ in range(layers))
        self.fc = nn.Linear(int(encoder.config.hidden_size if hasattr(encoder.config, "hidden_size")
                                else encoder.config.dim), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        ids, mask = split_tokens(x)
        out = self.encoder(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
        hidden = out.hidden_states[1:]  # [0] is the embeddings
        for tap, h in zip(self.taps, hidden):
            tap(masked_mean(h, mask, channels_first=False)[:, :, None, None])
        return self.fc(masked_mean(out.last_hidden_state, mask, channels_first=False))


def _encoder_from_config(config: Any) -> nn.Module:
    transformers = require_transformers("an hf: backbone")
    try:
        return transformers.AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # encoder types without a pooling layer (DistilBERT)
        return transformers.AutoModel.from_config(config)


def _hf_config(source: str, tokens: TokenSpec) -> Any:
    """The configuration `hf:<source>` names: a model type's defaults or a local folder's config.json;
    with the text modality's vocabulary size and padding id."""
    transformers = require_transformers(f"backbone 'hf:{source}'")
    folder = Path(source).expanduser()
    if folder.is_dir():
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise UserError(f"backbone 'hf:{source}': {str(folder)!r} holds no readable config.json "
                            f"({type(exc).__name__}); pass a model type (hf:bert) or a folder with a config.json") from None
    else:
        config = transformers.AutoConfig.for_model(source)
    config.vocab_size, config.pad_token_id = tokens.vocab_size, tokens.pad_id
    return config


def hf_backbone(source: str, input_shape: tuple[int, ...], num_classes: int, tokens: TokenSpec) -> FeatureModel:
    name = f"hf:{source}"
    length = _token_shape(name, input_shape, tokens)
    config = _hf_config(source, tokens)
    if getattr(config, "max_position_embeddings", length) < length:
        raise UserError(f"backbone {name!r} takes at most {config.max_position_embeddings} tokens, but the text "
                        f"modality has {length}; set max_length={config.max_position_embeddings} or less")
    net = HFEncoder(_encoder_from_config(config), num_classes)
    model = FeatureModel(net, name, num_classes, [f"taps.{i}" for i in range(len(net.taps))], head_module="fc")
    return _described(model, input_shape)


def _model_types() -> list[str]:
    try:
        from transformers import CONFIG_MAPPING
    except ImportError:
        return []
    return sorted(CONFIG_MAPPING.keys())


def _resolve_hf(name: str) -> Entry | None:
    prefix, sep, source = name.partition(":")
    if prefix != "hf" or not sep or not source:
        return None
    if not Path(source).expanduser().is_dir() and source not in _model_types():
        if not _model_types():
            require_transformers(f"backbone {name!r}")
        return None

    def factory(input_shape: tuple[int, ...], num_classes: int, *, tokens: TokenSpec) -> FeatureModel:
        return hf_backbone(source, input_shape, num_classes, tokens)

    return Entry(name=name, factory=factory, tasks=("classification",),
                 description=f"Hugging Face transformers encoder {source} (random init; weights from a local folder "
                             "with --student-init / --teacher-init)",
                 meta={"family": "hf", "takes_tokens": True})


BACKBONES.add_resolver(_resolve_hf, suggestions=lambda: [f"hf:{t}" for t in _model_types()])


# -- pretrained weights from a local folder --------------------------------------------------------
def init_from_folder(model: FeatureModel, folder: Path, tokens: TokenSpec | None, sha256: str | None,
                     what: str) -> dict:
    """`from_pretrained(folder, local_files_only=True)` into an `hf:` model: every tensor of the same
    name and shape is loaded into the encoder (the head stays fresh); the report is init_from_weights'.

    The text must have been tokenised with the folder's own tokenizer (`--set tokenizer=<folder>`),
    else the ids mean other words than the weights learnt: that is a one-line error.
    """
    if not isinstance(model.net, HFEncoder):
        raise UserError(f"{what} {str(folder)!r} is a folder (a Hugging Face model); only hf: backbones start from "
                        f"one, not {model.name!r}; pass a .pt, .pth or .safetensors file")
    if tokens is None or tokens.is_word_vocabulary or Path(tokens.tokenizer).resolve() != folder.resolve():
        raise UserError(f"{what} {str(folder)!r}: the text must be tokenised with these weights' tokenizer; "
                        f"add --set tokenizer={folder}")
    transformers = require_transformers(f"{what} {str(folder)!r}")
    try:
        pretrained = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{what} {str(folder)!r} cannot be loaded with from_pretrained ({first[:160]})") from None
    expected, given = model.net.encoder.state_dict(), pretrained.state_dict()
    loaded = [k for k, v in given.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)]
    if not loaded:
        raise UserError(f"{what} {str(folder)!r} fits no tensor of backbone {model.name!r}; pass the folder whose "
                        "config.json the backbone names (hf:<that folder>) or a model of the same type and size")
    model.net.encoder.load_state_dict({k: given[k] for k in loaded}, strict=False)
    skipped = [{"key": k, "file_shape": list(v.shape), "model_shape": list(expected[k].shape), "reason": "shape differs"}
               for k, v in given.items() if k in expected and k not in loaded]
    return {"file": str(folder), "sha256": sha256, "loaded": [f"net.encoder.{k}" for k in loaded], "adapted": [],
            "skipped": skipped, "not_in_file": [f"net.{k}" for k in model.net.state_dict()
                                                if not k.startswith("encoder.") or k[len("encoder."):] not in given],
            "unused": sorted(k for k in given if k not in expected)}

