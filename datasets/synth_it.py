"""synth-it: an embedded image-text classification set, generated in memory from a seed.

The image-text counterpart of synth-av (same latent design, same `shared` knob). Each sample has
a class and three latent codes drawn around the class's prototypes: a shared code, which both
modalities express, and one modality-specific code per modality. `shared` sets how much of each
modality's class evidence is shared (the "modality-general" and "modality-specific" decisive
features of the Modality Focusing Hypothesis).

- visual: synth-av's visual rendering (smooth coloured blob patterns at fixed places, one per
  code entry; sqrt(shared) x the shared code's rendering + sqrt(1 - shared) x the image's own
  code's), with synth-av's nuisances (smooth background, brightness, pixel noise).
- text: a short template sentence. Each of its `words` content slots expresses the shared code
  (with probability `shared`) or the text's own code: it picks one entry k of that code, more
  likely the larger |z_k| (softmax of 2 |z_k|), and writes one of `synonyms` words for
  (code, k, sign of z_k); the shared and the text-specific code have separate lexicons. With
  probability `class_word` the sentence also names a class, the true one half of the time (a
  text-only cue). `distractors` class-independent words are inserted at random places, the
  template's filler words carry nothing, and with probability `order_noise` two random pairs of
  neighbouring words are swapped. All words are pronounceable pseudo-words made from the seed.

The sentences become token tensors through the `tokenizer` option (cmkd_bench.data.text): "word", a
vocabulary built from the training sentences, or a local Hugging Face tokenizer folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cmkd_bench.data import DatasetSpec, Modality, Recipe, TensorPairs
from cmkd_bench.data.text import check_length, tokenizer_for
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from .synth_av import _nuisance, _render, _visual_basis

CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
TEMPLATES = (
    "the photo shows {} and {} near {} with {}",
    "{} {} seen after the storm by {} {}",
    "look at this {} with {} and {} in {}",
    "{} and {} {} reported here {}",
    "people saw {} {} then {} and {}",
    "this is {} {} {} and {}",
)


def pseudo_words(g: torch.Generator, count: int) -> list[str]:
    """`count` distinct two- or three-syllable pseudo-words (consonant-vowel syllables), seeded."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    chosen: list[str] = []
    seen = set()
    while len(chosen) < count:
        n = 2 + int(torch.randint(2, (1,), generator=g))
        word = "".join(syllables[int(i)] for i in torch.randint(len(syllables), (n,), generator=g))
        if word not in seen:
            seen.add(word)
            chosen.append(word)
    return chosen


def sentences(g: torch.Generator, labels: torch.Tensor, z_shared: torch.Tensor, z_text: torch.Tensor, *,
              lexicon: dict[str, list[str]], class_names: list[list[str]], distractor_words: list[str],
              shared: float, words: int, synonyms: int, distractors: int, class_word: float,
              order_noise: float) -> list[str]:
    n, codes = z_shared.shape
    use_shared = torch.rand(n, words, generator=g) < shared
    z = torch.where(use_shared[:, :, None], z_shared[:, None, :], z_text[:, None, :])  # n x words x codes
    entry = torch.multinomial(torch.softmax(2 * z.abs(), dim=2).reshape(-1, codes), 1, generator=g).view(n, words)
    positive = z.gather(2, entry[:, :, None]).squeeze(2) > 0
    synonym = torch.randint(synonyms, (n, words), generator=g)
    names = torch.rand(n, generator=g) < class_word
    named = torch.where(torch.rand(n, generator=g) < 0.5, labels, torch.randint(len(class_names), (n,), generator=g))
    name_synonym = torch.randint(2, (n,), generator=g)
    template = torch.randint(len(TEMPLATES), (n,), generator=g)
    distractor = torch.randint(len(distractor_words), (n, distractors), generator=g)
    swaps = torch.rand(n, generator=g) < order_noise
    out = []
    for i in range(n):
        content = []
        for s in range(words):
            source = "shared" if use_shared[i, s] else "text"
            index = (int(entry[i, s]) * 2 + int(positive[i, s])) * synonyms + int(synonym[i, s])
            content.append(lexicon[source][index])
        slots = TEMPLATES[int(template[i])].count("{}")
        text = TEMPLATES[int(template[i])].format(*content[:slots]).split() + content[slots:]
        if names[i]:
            text.insert(int(torch.randint(len(text) + 1, (1,), generator=g)), class_names[int(named[i])][int(name_synonym[i])])
        for d in distractor[i].tolist():
            text.insert(int(torch.randint(len(text) + 1, (1,), generator=g)), distractor_words[d])
        if swaps[i]:
            for j in torch.randint(len(text) - 1, (2,), generator=g).tolist():
                text[j], text[j + 1] = text[j + 1], text[j]
        out.append(" ".join(text))
    return out


@DATASETS.register("synth-it", reads_data_root=False, tasks=("classification",),
                   description="embedded paired images and short sentences with shared and modality-specific class evidence")
def synth_it(data_root: Path | None, classes: int = 8, codes: int = 8, shared: float = 0.5, noise: float = 1.6,
             image_size: int = 24, words: int = 8, synonyms: int = 3, distractors: int = 2, class_word: float = 0.3,
             order_noise: float = 0.5, max_length: int = 24, tokenizer: str = "word", train: int = 2000,
             val: int = 500, test: int = 1000, data_seed: int = 0) -> TensorPairs:
    if classes < 2 or codes < 1 or image_size < 8 or words < 1 or synonyms < 1 or distractors < 0:
        raise UserError(f"synth-it needs classes >= 2, codes >= 1, image_size >= 8, words >= 1, synonyms >= 1 and "
                        f"distractors >= 0 (got {classes}, {codes}, {image_size}, {words}, {synonyms}, {distractors})")
    for option, value in (("shared", shared), ("class_word", class_word), ("order_noise", order_noise)):
        if not 0 <= value <= 1:
            raise UserError(f"synth-it option {option} must be in [0, 1], got {value}")
    if min(train, val, test) < 1 or noise < 0:
        raise UserError("synth-it needs at least one sample in every split and a non-negative noise")
    check_length("synth-it", max_length)
    g = torch.Generator().manual_seed(data_seed)
    prototypes = {name: torch.randn(classes, codes, generator=g) for name in ("shared", "visual", "text")}
    basis = (_visual_basis(g, codes, image_size), _visual_basis(g, codes, image_size))
    vocabulary = pseudo_words(g, 4 * codes * synonyms + 2 * classes + 40)
    per_code = 2 * codes * synonyms
    lexicon = {"shared": vocabulary[:per_code], "text": vocabulary[per_code:2 * per_code]}
    names = vocabulary[2 * per_code:2 * per_code + 2 * classes]
    class_names = [names[2 * c:2 * c + 2] for c in range(classes)]
    distractor_words = vocabulary[2 * per_code + 2 * classes:]
    images, texts, labels = {}, {}, {}
    for split, n in (("train", train), ("val", val), ("test", test)):
        y = torch.randint(classes, (n,), generator=g)
        z_shared = prototypes["shared"][y] + noise * torch.randn(n, codes, generator=g)
        z_visual = prototypes["visual"][y] + noise * torch.randn(n, codes, generator=g)
        z_text = prototypes["text"][y] + noise * torch.randn(n, codes, generator=g)
        signal = math.sqrt(shared) * _render(z_shared, basis[0]) + math.sqrt(1 - shared) * _render(z_visual, basis[1])
        images[split] = signal + _nuisance("visual", g, n, image_size)
        texts[split] = sentences(g, y, z_shared, z_text, lexicon=lexicon, class_names=class_names,
                                 distractor_words=distractor_words, shared=shared, words=words, synonyms=synonyms,
                                 distractors=distractors, class_word=class_word, order_noise=order_noise)
        labels[split] = y
    tok = tokenizer_for(tokenizer, texts["train"])
    tokens = tok.spec(max_length)
    splits = {split: {"visual": images[split], "text": tok.encode(texts[split], max_length), "label": labels[split]}
              for split in images}
    spec = DatasetSpec(
        name="synth-it", task="classification", num_classes=classes,
        modalities={"visual": Modality((3, image_size, image_size), "small-cnn", "RGB-like image"),
                    "text": Modality((2, max_length), "text-cnn",
                                     f"short sentence, {tokens.vocab_size}-token {tokenizer} vocabulary", tokens)},
        teacher_modality="visual", student_modality="text",
        recipe=Recipe(epochs=12, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine"),
        split_sizes={"train": train, "val": val, "test": test},
        recipe_source="synth-av's recipe, so a teacher + student run takes about a minute on 2 CPU cores",
        options={"classes": classes, "codes": codes, "shared": shared, "noise": noise, "image_size": image_size,
                 "words": words, "synonyms": synonyms, "distractors": distractors, "class_word": class_word,
                 "order_noise": order_noise, "max_length": max_length, "tokenizer": tokenizer,
                 **({} if tokens.is_word_vocabulary else {"tokenizer_sha256": tokens.fingerprint}),
                 "train": train, "val": val, "test": test, "data_seed": data_seed},
    )
    data = TensorPairs(spec, splits)
    data.texts = texts  # the sentences, for inspection
    return data
