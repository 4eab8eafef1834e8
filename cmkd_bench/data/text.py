"""Text as a modality: how sentences become the fixed-length token tensor a batch carries.

A text modality's tensor is N x 2 x L, integer-valued: row 0 holds the token ids, row 1 the
attention mask (1 for a token, 0 for padding), padded or cut to L tokens. It is one tensor like
any other modality's, so batching, devices, caching and `model(batch[modality])` need nothing
new; the modality's `Modality.tokens` (a `TokenSpec`) declares the vocabulary it was made with,
and text backbones read their vocabulary size and padding id from there.

Two tokenisers:
- `WordVocabulary` ("word", the default): lower-cased words, numbers and single punctuation
  marks, the vocabulary built from the training split only (the words of val and test that the
  training split lacks become [UNK]), ordered by count then alphabetically, so it depends on
  the data alone. Every sequence starts with [CLS], so no sequence is empty. The words are kept
  in the spec and stored with each run as `vocab-<modality>.json`.
- `HFTokenizer` (a local directory): the tokenizer files that come with a user's Hugging Face
  weights (`AutoTokenizer.from_pretrained(path, local_files_only=True)`; nothing is
  downloaded). The ids are then the pretrained model's own.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]")
PAD, UNK, CLS = range(3)
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")  # words (with an apostrophe part), numbers, one mark
TEXT_EXTRA = "pip install 'cmkd-bench[text]'"


@dataclass(frozen=True)
class TokenSpec:
    """What a text modality's tensor was made with; `Modality.tokens` holds it."""

    tokenizer: str  # "word", or the local directory of a Hugging Face tokenizer
    vocab_size: int
    pad_id: int
    length: int  # L: tokens per sample, padding included
    fingerprint: str  # sha256 of the vocabulary (word) or of the tokenizer files (directory)
    words: tuple[str, ...] = field(default=(), repr=False)  # the word vocabulary, by id (word tokenizer only)

    @property
    def is_word_vocabulary(self) -> bool:
        return self.tokenizer == "word"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class WordVocabulary:
    """A word-level vocabulary: [PAD], [UNK], [CLS], then the training split's words."""

    def __init__(self, vocabulary: list[str] | tuple[str, ...]) -> None:
        if tuple(vocabulary[:3]) != SPECIALS:
            raise ValueError(f"a word vocabulary starts with {SPECIALS}")
        self.words = tuple(vocabulary)
        self.index = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def build(cls, texts: list[str], min_count: int = 1, max_size: int = 0) -> "WordVocabulary":
        """From the training texts: words seen at least `min_count` times, the most frequent first
        (ties alphabetically), at most `max_size` words besides the specials (0: no limit)."""
        if min_count < 1 or max_size < 0:
            raise UserError(f"need min_count >= 1 and max_size >= 0, got {min_count} and {max_size}")
        counts = Counter(word for text in texts for word in words(text))
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                      key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept[:max_size] if max_size else kept))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: list[str], length: int) -> Tensor:
        """N x 2 x L: [CLS] and the words' ids (unknown words: [UNK]), cut to L, padded with [PAD]."""
        out = torch.zeros(len(texts), 2, length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [CLS] + [self.index.get(word, UNK) for word in words(text)]
            ids = ids[:length]
            out[i, 0, :len(ids)] = torch.tensor(ids)
            out[i, 1, :len(ids)] = 1
        return out

    def to_json(self) -> str:
        return json.dumps({"tokenizer": "word", "words": list(self.words)}, ensure_ascii=False)

    def spec(self, length: int) -> TokenSpec:
        digest = hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()
        return TokenSpec("word", len(self), PAD, length, digest, self.words)


def require_transformers(what: str) -> Any:
    """The transformers package, or one line naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{what} needs the Hugging Face transformers package, which is not installed; "
                        f"{TEXT_EXTRA}") from None
    transformers.logging.set_verbosity_error()
    return transformers


def directory_fingerprint(path: Path) -> str:
    """sha256 over the names and contents of every file in a directory (sorted, recursively)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class HFTokenizer:
    """The tokenizer files of a local Hugging Face model directory (no download, ever)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise UserError(f"tokenizer {str(path)!r} is neither 'word' nor a directory; pass tokenizer=word or the "
                            "local folder of a Hugging Face model (the one holding its tokenizer files)")
        transformers = require_transformers(f"tokenizer {str(path)!r}")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except Exception as exc:  # a folder without (readable) tokenizer files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"tokenizer folder {str(path)!r} holds no Hugging Face tokenizer this transformers can "
                            f"read ({first[:160]}); pass the folder with tokenizer.json or vocab.txt") from None
        if self.tokenizer.pad_token_id is None:
            raise UserError(f"tokenizer folder {str(path)!r} defines no padding token; fixed-length batches need one")

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode(self, texts: list[str], length: int) -> Tensor:
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=length,
                                 return_tensors="pt")
        return torch.stack([encoded["input_ids"], encoded["attention_mask"]], dim=1).long()

    def spec(self, length: int) -> TokenSpec:
        return TokenSpec(str(self.path), len(self), int(self.tokenizer.pad_token_id), length,
                         directory_fingerprint(self.path))


def tokenizer_for(option: str, train_texts: list[str], min_count: int = 1, max_size: int = 0) -> WordVocabulary | HFTokenizer:
    """The dataset option `tokenizer`: "word" (a vocabulary from the training texts) or a local folder."""
    if option == "word":
        return WordVocabulary.build(train_texts, min_count, max_size)
    return HFTokenizer(option)


def check_length(dataset: str, length: int) -> None:
    if not 2 <= length <= 4096:
        raise UserError(f"{dataset}: max_length must be between 2 and 4096 tokens, got {length}")


def vocabulary_files(spec: Any) -> dict[str, str]:
    """The files a run stores beside its record: `vocab-<modality>.json` for each word-vocabulary
    text modality of the dataset spec (a Hugging Face tokenizer's files stay in the user's folder)."""
    files = {}
    for name, modality in spec.modalities.items():
        tokens = getattr(modality, "tokens", None)
        if tokens is not None and tokens.is_word_vocabulary:
            files[f"vocab-{name}.json"] = WordVocabulary(tokens.words).to_json() + "\n"
    return files
