"""crisismmd: CrisisMMD v2.0 (Alam, Ofli, Imran, ICWSM 2018), tweets with their images, image <-> text.

The user's copy of the release is the data root, as unpacked from crisisnlp.qcri.org:

    CrisisMMD_v2.0/
      data_image/<event>/<date>/<tweet id>_<k>.jpg
      crisismmd_datasplit_all/task_{informative,humanitarian,damage}_text_img_{train,dev,test}.tsv
      crisismmd_datasplit_agreed_label/task_{informative,humanitarian}_text_img_agreed_lab_{train,dev,test}.tsv

(a split folder may hold its files one level deeper, as its zip unpacks to a folder of the same
name). The split files are tab-separated with one header line; the informative and humanitarian
ones have the columns event_name, tweet_id, image_id, tweet_text, image, label, label_text,
label_image, label_text_image, one row per (tweet, image) pair; `image` is the path of the image
relative to the root (data_image/...). The suite reads `tweet_id`, `tweet_text`, `image` and
`label` by name, splitting each line on tabs as the published loaders do. There is nothing to
convert, so there is no `prepare` step: images are decoded from the user's copy when a batch asks
for them, and every image a row names must exist (checked before anything trains).

Which protocol the papers use. C2KD's code (github.com/huofushuo/C2KD) has no CrisisMMD pipeline
(its folders are ave/, cramed/, vggsound/), and FD-CMKD's code is not public; MST-Distill's
(github.com/Gray-OREO/MST-Distill) is the one reference with a CrisisMMD pipeline, so it is the
default protocol:

mst-distill (default): data_preprocess/preprocess_CrisisMMD_0.py reads every
  `task_humanitarian*` file of crisismmd_datasplit_all (train, dev and test together), keeps one row
  per tweet_id (the first; a tweet with several images keeps its first image) and the `label`
  column; preprocess_CrisisMMD_1.py maps the 8 humanitarian categories to ids in its `categories`
  order (not_humanitarian, affected_individuals, infrastructure_and_utility_damage,
  injured_or_dead_people, missing_or_found_people, rescue_volunteering_or_donation_effort,
  vehicle_damage, other_relevant_information); indices_gen.py draws 20 permutations of the tweets
  after np.random.seed(19980427) (metadata/CMMD-V2_indices.csv) and utils.get_indices takes the first
  60 % of permutation `group_<exp_id>` for train, the next 20 % for val, the last 20 % for test.
  The suite draws the same permutations (`split_group`, default 0) of the tweets in the order
  train, dev, test file; the reference concatenates the files in os.walk's order, which is the file
  system's. MST-Distill trains MLPs on frozen features (ResNet-50 pooled image features, BERTweet
  pooler outputs, preprocess_CrisisMMD_1.py); the suite trains the backbones end to end from the
  images and the tokens (an `hf:` backbone started from the user's local BERTweet folder with
  --student-init comes closest to its text side).
agreed-humanitarian: the release's crisismmd_datasplit_agreed_label split (rows whose text and image
  annotations agree), task_humanitarian_text_img_agreed_lab_{train,dev,test}.tsv as released, with the
  5 classes of the release's multimodal benchmark (Ofli, Alam, Imran, ISCRAM 2020): injured_or_dead_people
  and missing_or_found_people count as affected_individuals, vehicle_damage as
  infrastructure_and_utility_damage.
agreed-informative: the same split of the informative task, task_informative_text_img_agreed_lab_*.tsv,
  2 classes (informative, not_informative).

Text: each tweet is normalised as MST-Distill's normalizeTweet does for its two rules that need no
extra package (user mentions become "@USER", links "HTTPURL"; its ftfy and emoji steps are not
reproduced), then tokenised by the `tokenizer` option (cmkd_bench.data.text: "word", a vocabulary of the
training tweets, or a local Hugging Face tokenizer folder such as the user's copy of
vinai/bertweet-base) into `max_length` tokens (MST-Distill encodes with max_length=128).
Images: RandomResizedCrop + horizontal flip at train, a resize at test, ImageNet normalisation, as
the suite's audio-visual loaders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkd_bench.data import DatasetSpec, DecodedPairs, Modality, Recipe, SampleSeed
from cmkd_bench.data.media import image_array, random_resized_box, read_image
from cmkd_bench.data.text import check_length, tokenizer_for
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS

from ._av_common import read_text

MST_CATEGORIES = ("not_humanitarian", "affected_individuals", "infrastructure_and_utility_damage",
                  "injured_or_dead_people", "missing_or_found_people", "rescue_volunteering_or_donation_effort",
                  "vehicle_damage", "other_relevant_information")
AGREED_HUMANITARIAN = ("affected_individuals", "infrastructure_and_utility_damage", "not_humanitarian",
                       "other_relevant_information", "rescue_volunteering_or_donation_effort")
MERGED = {"injured_or_dead_people": "affected_individuals", "missing_or_found_people": "affected_individuals",
          "vehicle_damage": "infrastructure_and_utility_damage"}
INFORMATIVE = ("informative", "not_informative")
MST_SEED, MST_FRACTIONS = 19980427, (0.6, 0.8)
RELEASE = "unpack the CrisisMMD v2.0 release (crisisnlp.qcri.org/crisismmd) into --data-root"
COLUMNS = ("tweet_id", "tweet_text", "image", "label")
RECIPE = Recipe(epochs=30, batch_size=64, lr=1e-3, optimizer="adam", momentum=0.9, weight_decay=1e-4, schedule="cosine")
RECIPE_SOURCE = ("Adam with cosine annealing as MST-Distill's utils.get_Tmodules / get_Smodules; lr 1e-3, 30 epochs, "
                 "batch 64 and weight decay 1e-4 are the suite's choice for end-to-end training")


@dataclass(frozen=True)
class CrisisProtocol:
    name: str
    folder: str
    files: tuple[str, str, str]  # train, dev, test
    classes: tuple[str, ...]
    merge: dict
    one_per_tweet: bool  # keep the first row of each tweet_id, and split by MST-Distill's permutation


def _agreed(task: str) -> tuple[str, str, str]:
    return tuple(f"task_{task}_text_img_agreed_lab_{split}.tsv" for split in ("train", "dev", "test"))  # type: ignore[return-value]


PROTOCOLS = {
    "mst-distill": CrisisProtocol("mst-distill", "crisismmd_datasplit_all",
                                  tuple(f"task_humanitarian_text_img_{s}.tsv" for s in ("train", "dev", "test")),  # type: ignore[arg-type]
                                  MST_CATEGORIES, {}, True),
    "agreed-humanitarian": CrisisProtocol("agreed-humanitarian", "crisismmd_datasplit_agreed_label",
                                          _agreed("humanitarian"), AGREED_HUMANITARIAN, MERGED, False),
    "agreed-informative": CrisisProtocol("agreed-informative", "crisismmd_datasplit_agreed_label",
                                         _agreed("informative"), INFORMATIVE, {}, False),
}
DEFAULT_PROTOCOL = "mst-distill"


def normalise_tweet(text: str) -> str:
    """MST-Distill's normalizeTweet, its package-free rules: @mentions -> @USER, links -> HTTPURL."""
    text = re.sub(r"(?<!\w)@\w+", "@USER", text)
    return re.sub(r"(?i)\b(?:https?://|www\.)\S+", "HTTPURL", text)


@dataclass(frozen=True)
class Row:
    tweet_id: str
    text: str
    image: str
    label: int
    where: str


def split_file(root: Path, folder: str, name: str) -> Path:
    for candidate in (root / folder / name, root / folder / folder / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"crisismmd: split file {name!r} is missing under {str(root / folder)!r}; {RELEASE} "
                    f"(its {folder}.zip unpacked there)")


def read_rows(path: Path, protocol: CrisisProtocol, root: Path) -> list[Row]:
    """The rows of one split file, each checked: known label, an image path, the image on disk."""
    lines = read_text("crisismmd", path, RELEASE).splitlines()
    if not lines:
        raise UserError(f"crisismmd: {str(path)!r} is empty; {RELEASE}")
    header = lines[0].split("\t")
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserError(f"crisismmd: {str(path)!r} has no column {missing[0]!r} (its header is "
                        f"{', '.join(header)[:200]}); pass the release's tab-separated split files")
    column = {name: header.index(name) for name in COLUMNS}
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        where = f"{path.name} line {number}"
        if len(fields) != len(header):
            raise UserError(f"crisismmd: {where} has {len(fields)} tab-separated fields, the header {len(header)}; "
                            "the file is not the release's (or was re-saved with tabs inside a tweet)")
        tweet, image = fields[column["tweet_id"]].strip(), fields[column["image"]].strip()
        label = fields[column["label"]].strip()
        label = protocol.merge.get(label, label)
        if label not in protocol.classes:
            raise UserError(f"crisismmd: {where}: label {label!r} is not one of protocol {protocol.name!r}'s classes "
                            f"({', '.join(protocol.classes)}); pick the protocol of this task (--set protocol=...)")
        if not image or image in ("<unset>", "nan"):
            raise UserError(f"crisismmd: {where}: tweet {tweet} has no image (its image column is empty); every row "
                            "of the release's text-image split names one; restore the file from the release")
        if not (root / image).is_file():
            raise UserError(f"crisismmd: {where}: image {image!r} of tweet {tweet} is not under {str(root)!r}; "
                            f"{RELEASE} (its data_image/ folder)")
        rows.append(Row(tweet, normalise_tweet(fields[column["tweet_text"]]), image,
                        protocol.classes.index(label), where))
    return rows


def mst_distill_split(count: int, group: int) -> dict[str, np.ndarray]:
    """Positions of each split: permutation `group` after np.random.seed(19980427), 60 / 20 / 20 %
    (MST-Distill's indices_gen.py and utils.get_indices)."""
    state = np.random.RandomState(MST_SEED)  # np.random.seed + np.random.permutation, without the global state
    for _ in range(group):
        state.permutation(count)
    order = state.permutation(count)
    a, b = int(count * MST_FRACTIONS[0]), int(count * MST_FRACTIONS[1])
    return {"train": order[:a], "val": order[a:b], "test": order[b:]}


@dataclass
class TweetReader:
    """One split: images decoded from the user's copy, the tokens computed once."""

    root: Path
    images: list[str]
    tokens: np.ndarray  # N x 2 x L
    labels: np.ndarray
    image_size: int
    augment: bool

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int, seed: SampleSeed | None) -> dict[str, np.ndarray]:
        image = read_image(self.root / self.images[index])
        box, flip = None, False
        if seed is not None and self.augment:
            rng = seed.rng()
            box = random_resized_box(rng, *image.size)
            flip = bool(rng.random() < 0.5)
        return {"visual": image_array(image, self.image_size, box, flip), "text": self.tokens[index]}


@DATASETS.register("crisismmd", aliases=("crisis-mmd",), tasks=("classification",),
                   description="CrisisMMD v2.0 tweets and their images; protocol mst-distill (default, 8 humanitarian "
                               "classes), agreed-humanitarian (5) or agreed-informative (2)",
                   reference="Alam, Ofli, Imran. CrisisMMD: Multimodal Twitter Datasets from Natural Disasters. ICWSM "
                             "2018; protocol from MST-Distill's code (Gray-OREO/MST-Distill)")
def crisismmd(data_root: Path | None, protocol: str = DEFAULT_PROTOCOL, image_size: int = 224, augment: bool = True,
              tokenizer: str = "word", max_length: int = 64, min_count: int = 1, split_group: int = 0,
              num_workers: int = 4) -> DecodedPairs:
    if protocol not in PROTOCOLS:
        raise UserError(f"crisismmd: unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)} "
                        "(`--set protocol=NAME`)")
    if data_root is None or not Path(data_root).is_dir():
        raise UserError(f"crisismmd reads the CrisisMMD v2.0 release; pass --data-root, the folder holding data_image/ "
                        f"and the split folders{'' if data_root is None else f' ({str(data_root)!r} is not a folder)'}")
    if image_size < 16:
        raise UserError(f"crisismmd: image_size must be at least 16, got {image_size}")
    if not 0 <= split_group < 20:
        raise UserError(f"crisismmd: split_group must be one of MST-Distill's 20 permutations, 0 to 19, got {split_group}")
    check_length("crisismmd", max_length)
    root, chosen = Path(data_root), PROTOCOLS[protocol]
    files = [split_file(root, chosen.folder, name) for name in chosen.files]
    per_file = [read_rows(path, chosen, root) for path in files]
    if chosen.one_per_tweet:
        first: dict[str, Row] = {}
        for row in (r for rows in per_file for r in rows):
            first.setdefault(row.tweet_id, row)
        tweets = list(first.values())
        rows = {split: [tweets[i] for i in positions]
                for split, positions in mst_distill_split(len(tweets), split_group).items()}
    else:
        rows = dict(zip(("train", "val", "test"), per_file))
    for split, chosen_rows in rows.items():
        if not chosen_rows:
            raise UserError(f"crisismmd: the {split} split is empty ({', '.join(p.name for p in files)}); {RELEASE}")
    tok = tokenizer_for(tokenizer, [r.text for r in rows["train"]], min_count)
    tokens = tok.spec(max_length)
    readers = {split: TweetReader(root, [r.image for r in chosen_rows], tok.encode([r.text for r in chosen_rows],
                                                                                 max_length).numpy(),
                                  np.array([r.label for r in chosen_rows], dtype=np.int64), image_size, augment)
               for split, chosen_rows in rows.items()}
    options = {"protocol": protocol, "image_size": image_size, "augment": augment, "tokenizer": tokenizer,
               "max_length": max_length, "min_count": min_count, "vocabulary_sha256": tokens.fingerprint,
               **({"split_group": split_group} if chosen.one_per_tweet else {})}
    spec = DatasetSpec(
        name="crisismmd", task="classification", num_classes=len(chosen.classes),
        modalities={"visual": Modality((3, image_size, image_size), "resnet18", "the tweet's image, ImageNet-normalised"),
                    "text": Modality((2, max_length), "text-cnn",
                                     f"the tweet, {tokens.vocab_size}-token {'word' if tokens.is_word_vocabulary else 'HF'} "
                                     "vocabulary", tokens)},
        teacher_modality="visual", student_modality="text", recipe=RECIPE,
        split_sizes={split: len(r) for split, r in rows.items()}, recipe_source=RECIPE_SOURCE, options=options)
    return DecodedPairs(spec, readers, num_workers)
