"""Text as a modality: the vocabulary and token tensors, the text backbones, synth-it end to end in
both directions, a tiny local BERT, and CrisisMMD from a fixture in the release's file format."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from cmkd_bench.catalog import load_all
from cmkd_bench.cli import main
from cmkd_bench.data.text import CLS, PAD, UNK, WordVocabulary, require_transformers
from cmkd_bench.datasets.synth_it import TEMPLATES
from cmkd_bench.errors import UserError
from cmkd_bench.registry import DATASETS
from cmkd_bench.registry import BACKBONES
from cmkd_bench.training.runner import build_model, initialise

load_all()
TINY_IT = ["--set", "train=48", "--set", "val=16", "--set", "test=16", "--set", "image_size=16"]


@dataclass
class Result:
    exit_code: int
    output: str  # stdout and stderr


@pytest.fixture
def run_cli(capsys):
    """`cmkd-bench ARGS` in this process, through the CLI's own entry point (its error handling included)."""
    def invoke(*args: str) -> Result:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        return Result(exited.value.code, captured.out + captured.err)

    return invoke


def one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and message.startswith("error: ") and "Traceback" not in message, message
    for needle in needles:
        assert needle in message, message


# -- vocabulary and token tensors --------------------------------------------------------------
def test_word_vocabulary_orders_by_count_then_alphabet_and_encodes_with_cls_and_padding():
    vocab = WordVocabulary.build(["b a b, c", "a b"])
    assert vocab.words == ("[PAD]", "[UNK]", "[CLS]", "b", "a", ",", "c")  # b: 3, a: 2, then ',' < 'c'
    out = vocab.encode(["A b zzz", "c " * 10], length=5)
    assert out.dtype == torch.long and out.shape == (2, 2, 5)
    assert out[0].tolist() == [[CLS, 4, 3, UNK, PAD], [1, 1, 1, 1, 0]]  # unknown word: [UNK]; then padding
    assert out[1].tolist() == [[CLS, 6, 6, 6, 6], [1, 1, 1, 1, 1]]  # cut to the length


def test_synth_it_is_a_function_of_its_seed_and_shared_moves_the_words_between_lexicons():
    a = DATASETS.build("synth-it", None, train=64, val=8, test=8, image_size=16)
    b = DATASETS.build("synth-it", None, train=64, val=8, test=8, image_size=16)
    assert a.texts == b.texts and all(torch.equal(a.splits["train"][k], b.splits["train"][k]) for k in a.splits["train"])
    assert DATASETS.build("synth-it", None, train=64, val=8, test=8, image_size=16, data_seed=1).texts != a.texts
    plain = {"train": 200, "val": 8, "test": 8, "image_size": 16, "class_word": 0.0, "distractors": 0}
    only_shared = {w for t in DATASETS.build("synth-it", None, shared=1.0, **plain).texts["train"] for w in t.split()}
    only_own = {w for t in DATASETS.build("synth-it", None, shared=0.0, **plain).texts["train"] for w in t.split()}
    fillers = {w for template in TEMPLATES for w in template.replace("{}", " ").split()}
    assert only_shared & only_own <= fillers  # the shared and the text-specific codes have separate words
    assert len(only_shared - fillers) > 30 and len(only_own - fillers) > 30


def test_text_cnn_ignores_what_sits_under_the_padding_and_pools_stages_over_tokens():
    data = DATASETS.build("synth-it", None, train=32, val=8, test=8, image_size=16)
    model = build_model("text-cnn", data, "text", 0, torch.device("cpu")).eval()
    x = data.splits["val"]["text"][:4].clone()
    noisy = x.clone()
    noisy[:, 0][x[:, 1] == 0] = 7  # other ids where the mask is 0
    a, b = model(x), model(noisy)
    assert torch.allclose(a.logits, b.logits, atol=1e-6) and torch.allclose(a.feature, b.feature, atol=1e-6)
    assert all(shape == (64, 1, 1) for shape in model.info.stage_shapes.values())
    assert a.stages["taps.2"].flatten(1).allclose(a.feature_post, atol=1e-6)  # the last stage's token mean
    assert not torch.allclose(a.feature, a.feature_post)  # pre- vs post-ReLU token means


@pytest.mark.parametrize("backbone", ["text-cnn", "text-transformer"])
def test_text_backbones_learn_synth_it_sentences_in_a_few_steps(backbone):
    torch.manual_seed(0)
    data = DATASETS.build("synth-it", None, train=128, val=8, test=8, image_size=16, class_word=1.0, classes=4)
    model = build_model(backbone, data, "text", 0, torch.device("cpu"))
    x, y = data.splits["train"]["text"], data.splits["train"]["label"]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(model(x).logits, y)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first  # the class words alone make the training split learnable


def test_a_text_backbone_on_an_image_modality_and_an_image_backbone_on_text_are_one_line(tmp_path, run_cli):
    one_line_error(run_cli("run", "--method", "kd", "--dataset", "synth-it", "--teacher", "text-cnn", *TINY_IT,
                           "--out", str(tmp_path)), "reads text", "'visual'")
    one_line_error(run_cli("run", "--method", "kd", "--dataset", "synth-it", "--student", "small-cnn", *TINY_IT,
                           "--out", str(tmp_path)), "is text", "text-cnn")
    assert not any(tmp_path.iterdir())


def test_a_missing_transformers_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"cmkd-bench\[text\]"):
        require_transformers("backbone 'hf:bert'")
    with pytest.raises(UserError, match=r"hf:bert.*cmkd-bench\[text\]"):
        BACKBONES.get("hf:bert")


# -- synth-it end to end -----------------------------------------------------------------------
@pytest.mark.parametrize("direction", [("visual", "text"), ("text", "visual")])
def test_fd_runs_on_synth_it_in_both_directions_and_stores_the_vocabulary(tmp_path, run_cli, direction):
    teacher, student = direction
    result = run_cli("run", "--method", "fd", "--dataset", "synth-it", "--teacher-modality", teacher,
                     "--student-modality", student, "--epochs", "1", "--batch-size", "16", "--device", "cpu",
                     "--quiet", *TINY_IT, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("fd-")]
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "completed" and (record["teacher_modality"], record["student_modality"]) == direction
    stored = json.loads((run_dir / "vocab-text.json").read_text())
    data = DATASETS.build("synth-it", None, train=48, val=16, test=16, image_size=16)
    assert stored["words"] == list(WordVocabulary.build(data.texts["train"]).words)  # the training split's, by id


# -- a tiny local BERT --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny-bert")
    data = DATASETS.build("synth-it", None, train=48, val=16, test=16, image_size=16)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WordVocabulary.build(data.texts["train"]).words[3:]]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)  # random weights, saved locally
    return folder


def test_a_bert_from_a_tiny_local_config_trains_one_step(tiny_bert, tmp_path, run_cli):
    data = DATASETS.build("synth-it", None, train=48, val=16, test=16, image_size=16, tokenizer=str(tiny_bert))
    model = build_model(f"hf:{tiny_bert}", data, "text", 0, torch.device("cpu"))
    assert list(model.info.stage_shapes.values()) == [(16, 1, 1), (16, 1, 1)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(data.batches("train", 16, shuffle=True))
    loss = torch.nn.functional.cross_entropy(model(batch["text"]).logits, batch["label"])
    torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert "net.fc.weight" in moved and any(n.startswith("net.encoder.encoder.layer.0.") for n in moved)
    # and through the CLI: the student starts from the folder's weights (from_pretrained, local files only)
    result = run_cli("run", "--method", "kd", "--dataset", "synth-it", "--student", f"hf:{tiny_bert}",
                     "--student-init", str(tiny_bert), "--set", f"tokenizer={tiny_bert}", "--epochs", "1",
                     "--batch-size", "16", "--device", "cpu", "--quiet", *TINY_IT, "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    record = json.loads(next(tmp_path.glob("kd-*/result.json")).read_text())
    assert len(record["student_init"]["loaded"]) > 20 and not record["student_init"]["skipped"]


def test_starting_a_bert_from_its_folder_loads_every_encoder_tensor_and_keeps_the_head_fresh(tiny_bert):
    from safetensors.torch import load_file

    data = DATASETS.build("synth-it", None, train=48, val=16, test=16, image_size=16, tokenizer=str(tiny_bert))
    model = build_model(f"hf:{tiny_bert}", data, "text", 3, torch.device("cpu"))
    head = model.net.fc.weight.detach().clone()
    report = initialise(model, tiny_bert, None, data, "text", "student", torch.device("cpu"))
    saved, encoder = load_file(str(tiny_bert / "model.safetensors")), model.net.encoder.state_dict()
    assert set(saved) == set(encoder) and all(torch.equal(saved[k], encoder[k]) for k in saved)
    assert len(report["loaded"]) == len(saved) and torch.equal(model.net.fc.weight, head)
    assert report["not_in_file"] == ["net.fc.weight", "net.fc.bias"]


def test_starting_a_bert_from_its_folder_needs_its_tokenizer(tiny_bert, tmp_path, run_cli):
    one_line_error(run_cli("run", "--method", "kd", "--dataset", "synth-it", "--student", f"hf:{tiny_bert}",
                           "--student-init", str(tiny_bert), *TINY_IT, "--out", str(tmp_path)),
                   f"--set tokenizer={tiny_bert}")


# -- CrisisMMD ------------------------------------------------------------------------------------
HEADER = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image\tlabel_text_image"
HUMANITARIAN = ["not_humanitarian", "infrastructure_and_utility_damage", "rescue_volunteering_or_donation_effort",
                "other_relevant_information", "affected_individuals", "vehicle_damage", "injured_or_dead_people"]


def write_release(root: Path, rows_per_file: int = 8) -> dict[str, list[tuple[str, str, str]]]:
    """The release's layout with tiny JPEGs: both split folders, rows as the release writes them."""
    from PIL import Image

    written: dict[str, list[tuple[str, str, str]]] = {}
    rng = np.random.default_rng(0)
    for folder, task, suffix in (("crisismmd_datasplit_all", "humanitarian", ""),
                                 ("crisismmd_datasplit_agreed_label", "humanitarian", "_agreed_lab"),
                                 ("crisismmd_datasplit_agreed_label", "informative", "_agreed_lab")):
        for s, split in enumerate(("train", "dev", "test")):
            lines = [HEADER]
            for i in range(rows_per_file):
                tweet = f"9016460745275{s}{i:02d}{len(task)}"
                label = (HUMANITARIAN[i % len(HUMANITARIAN)] if task == "humanitarian"
                         else ("informative", "not_informative")[i % 2])
                image = f"data_image/hurricane_harvey/27_8_2017/{tweet}_0.jpg"
                path = root / image
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    Image.fromarray(rng.integers(0, 255, (18, 22, 3), dtype=np.uint8)).save(path)
                text = f"RT @user{i}: flood {label.replace('_', ' ')} near houston https://t.co/abc{i}"
                lines.append("\t".join(["hurricane_harvey", tweet, f"{tweet}_0", text, image, label, label, label,
                                        "Positive"]))
                written.setdefault(f"{folder}/{task}/{split}", []).append((tweet, image, label))
            target = root / folder / f"task_{task}_text_img{suffix}_{split}.tsv"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


@pytest.fixture
def release(tmp_path) -> Path:
    root = tmp_path / "CrisisMMD_v2.0"
    write_release(root)
    return root


def test_mst_distill_protocol_dedups_tweets_and_takes_its_seeded_60_20_20_permutation(release):
    lines = (release / "crisismmd_datasplit_all/task_humanitarian_text_img_train.tsv").read_text().splitlines()
    second = lines[1].split("\t")
    second[4] = second[4].replace("_0.jpg", "_1.jpg")  # the same tweet with a second image: only the first is kept
    (release / second[4]).write_bytes((release / lines[1].split("\t")[4]).read_bytes())
    lines.insert(2, "\t".join(second))
    (release / "crisismmd_datasplit_all/task_humanitarian_text_img_train.tsv").write_text("\n".join(lines) + "\n")
    data = DATASETS.build("crisismmd", release, image_size=16, num_workers=0)
    tweets = []
    for split in ("train", "dev", "test"):
        for line in (release / f"crisismmd_datasplit_all/task_humanitarian_text_img_{split}.tsv").read_text().splitlines()[1:]:
            fields = line.split("\t")
            if fields[1] not in [t[0] for t in tweets]:
                tweets.append((fields[1], fields[4], fields[5]))
    np.random.seed(19980427)  # MST-Distill's indices_gen.py, group_0, and utils.get_indices
    order = np.random.permutation(len(tweets))
    n = len(tweets)
    expected = {"train": order[:int(n * 0.6)], "val": order[int(n * 0.6):int(n * 0.8)], "test": order[int(n * 0.8):]}
    categories = ["not_humanitarian", "affected_individuals", "infrastructure_and_utility_damage",
                  "injured_or_dead_people", "missing_or_found_people", "rescue_volunteering_or_donation_effort",
                  "vehicle_damage", "other_relevant_information"]
    assert data.spec.num_classes == 8 and len(tweets) == 24
    for split, positions in expected.items():
        reader = data.readers[split]
        assert reader.images == [tweets[i][1] for i in positions]
        assert reader.labels.tolist() == [categories.index(tweets[i][2]) for i in positions]
    sample = data.readers["train"].read(0, None)
    assert sample["visual"].shape == (3, 16, 16) and sample["text"].shape == (2, 64)


def test_agreed_humanitarian_reads_the_release_split_and_merges_to_five_classes(release):
    data = DATASETS.build("crisismmd", release, protocol="agreed-humanitarian", image_size=16, num_workers=0)
    assert data.spec.num_classes == 5 and data.spec.split_sizes == {"train": 8, "val": 8, "test": 8}
    # vehicle_damage -> infrastructure (1), injured_or_dead_people -> affected_individuals (0)
    assert data.readers["train"].labels.tolist() == [2, 1, 4, 3, 0, 1, 0, 2]
    informative = DATASETS.build("crisismmd", release, protocol="agreed-informative", image_size=16, num_workers=0)
    assert informative.spec.num_classes == 2 and informative.readers["test"].labels.tolist() == [0, 1] * 4


def test_crisismmd_trains_one_epoch_from_the_release_files(release, tmp_path, run_cli):
    result = run_cli("run", "--method", "fd", "--dataset", "crisismmd", "--data-root", str(release), "--teacher",
                     "small-cnn", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet",
                     "--set", "image_size=16", "--set", "num_workers=0", "--set", "max_length=16",
                     "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    record = json.loads(next((tmp_path / "runs").glob("fd-*/result.json")).read_text())
    assert record["status"] == "completed" and record["data_options"]["protocol"] == "mst-distill"
    assert record["history"][0]["losses"]


def test_crisismmd_bad_input_is_one_line(release, tmp_path, run_cli):
    out = ["--out", str(tmp_path / "runs"), "--set", "image_size=16", "--set", "num_workers=0"]
    base = ["run", "--method", "kd", "--dataset", "crisismmd", "--data-root", str(release)]
    tsv = release / "crisismmd_datasplit_agreed_label/task_humanitarian_text_img_agreed_lab_dev.tsv"
    tsv.unlink()
    one_line_error(run_cli(*base, "--set", "protocol=agreed-humanitarian", *out),
                   "task_humanitarian_text_img_agreed_lab_dev.tsv", "is missing")
    path = release / "crisismmd_datasplit_all/task_humanitarian_text_img_test.tsv"
    lines = path.read_text().splitlines()
    fields = lines[3].split("\t")
    fields[4] = ""
    path.write_text("\n".join([*lines[:3], "\t".join(fields), *lines[4:]]) + "\n")
    one_line_error(run_cli(*base, *out), "line 4", f"tweet {fields[1]} has no image")
    fields[4] = "data_image/hurricane_harvey/27_8_2017/gone.jpg"
    path.write_text("\n".join([*lines[:3], "\t".join(fields), *lines[4:]]) + "\n")
    one_line_error(run_cli(*base, *out), "gone.jpg", "is not under")
    one_line_error(run_cli(*base[:-2], *out), "--data-root")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
