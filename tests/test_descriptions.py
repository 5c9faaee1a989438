"""Class description sources: shipped files, user files, the language-model source and its
cache, the controls, and matching by name."""

from __future__ import annotations

import json

import pytest
import yaml

from lmvision.data import spec
from lmvision.errors import UserError
from lmvision.text.descriptions import (
    ClassNameDescriptions,
    FileDescriptions,
    RandomWordsDescriptions,
    shipped_banks,
)
from lmvision.text.language_model import LanguageModelDescriptions, parse_list

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("target", spec.SHAPES_TARGETS)
def test_shipped_shapes_banks_cover_every_target(target):
    classes = spec.shapes_classes(target)
    bank = FileDescriptions(f"shapes_{target}")(classes)
    assert list(bank.by_class) == classes
    for name, texts in bank.by_class.items():
        assert len(texts) >= 3 and len(set(texts)) == len(texts)
        assert all(t.startswith(f"{name}: ") for t in texts)


def test_shipped_digits_and_cifar_banks():
    assert {"digits", "cifar10", "cifar100"} <= set(shipped_banks())
    digits = FileDescriptions("digits")(list(spec.DIGITS))
    assert sum(len(v) for v in digits.by_class.values()) >= 5 * 10
    cifar10 = FileDescriptions("cifar10")(CIFAR10)
    assert min(len(v) for v in cifar10.by_class.values()) >= 5
    with open(FileDescriptions("cifar100").resolve()) as f:
        names = list(yaml.safe_load(f))
    assert len(names) == 100 and "aquarium_fish" in names and "willow_tree" in names
    bank = FileDescriptions("cifar100")(names)
    assert bank.by_class["maple_tree"][0].startswith("maple tree: ")  # underscores read as spaces


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_user_file_by_path_with_template_and_provenance(tmp_path, suffix):
    path = tmp_path / f"mine{suffix}"
    data = {"cat": ["pointy ears", "whiskers"], "dog": ["floppy ears"]}
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    bank = FileDescriptions(str(path), template="a {class_name} with {description}")(["dog", "cat"])
    assert bank.by_class == {"dog": ["a dog with floppy ears"],
                             "cat": ["a cat with pointy ears", "a cat with whiskers"]}
    assert bank.flat() == (["a dog with floppy ears", "a cat with pointy ears",
                            "a cat with whiskers"], [0, 1, 1])
    assert bank.provenance["source"] == "file" and bank.provenance["path"] == str(path)
    assert bank.phrases["cat"] == ["pointy ears", "whiskers"]


def test_classes_are_matched_by_name_with_one_error_listing_every_mismatch(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"circle": ["round"], "sqare": ["boxy"], "star": ["pointy"]}))
    with pytest.raises(UserError) as err:
        FileDescriptions(str(path))(["circle", "square", "triangle"])
    message = str(err.value)
    assert str(path) in message
    assert "'square'" in message and "'triangle'" in message  # missing
    assert "'star'" in message  # extra
    assert "'sqare' -> 'square'" in message  # misspelled


def test_order_of_the_file_does_not_matter(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"b": ["second"], "a": ["first"]}))
    bank = FileDescriptions(str(path))(["a", "b"])
    assert bank.flat() == (["a: first", "b: second"], [0, 1])


@pytest.mark.parametrize("content, match", [
    ("cat: [ears\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("cat: []\n", "class 'cat' needs a non-empty list"),
    ("cat: ['  ']\n", "class 'cat' needs a non-empty list"),
])
def test_bad_description_files(tmp_path, content, match):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        FileDescriptions(str(path))(["cat"])


def test_a_file_that_is_not_text(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("caf\xe9: [round]\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.yaml: not UTF-8 text"):
        FileDescriptions(str(path))(["cat"])


def test_missing_file_lists_the_shipped_banks():
    with pytest.raises(UserError, match="no such file, and not a shipped bank.*cifar10"):
        FileDescriptions("/nowhere/descriptions.yaml")(["cat"])


def test_class_name_control():
    bank = ClassNameDescriptions(["a photo of a {class_name}.", "{class_name}"])(["sea_lion"])
    assert bank.by_class == {"sea_lion": ["a photo of a sea lion.", "sea lion"]}
    with pytest.raises(UserError, match="class_name"):
        ClassNameDescriptions(["a {colour} thing"])(["cat"])


def test_random_words_control_copies_counts_and_lengths_and_follows_its_seed():
    classes = spec.shapes_classes("color_shape")
    real = FileDescriptions("shapes_color_shape")(classes)
    control = RandomWordsDescriptions(FileDescriptions("shapes_color_shape"), seed=1)(classes)
    for name in classes:
        assert len(control.phrases[name]) == len(real.phrases[name])
        for fake, true in zip(control.phrases[name], real.phrases[name]):
            assert [len(w) for w in fake.split()] == [len(w) for w in true.split()]
            assert fake != true
        assert all(t.startswith(f"{name}: ") for t in control.by_class[name])
    again = RandomWordsDescriptions(FileDescriptions("shapes_color_shape"), seed=1)(classes)
    other = RandomWordsDescriptions(FileDescriptions("shapes_color_shape"), seed=2)(classes)
    assert again.by_class == control.by_class and other.by_class != control.by_class
    assert control.provenance["reference"]["source"] == "file"


def test_parse_list_style_answers():
    answer = " round body\n- has red skin.\n2) a stem on top\n\n* leaves\nQ: What else?\n- no"
    assert parse_list(answer) == ["round body", "has red skin", "a stem on top", "leaves"]


# -- language model ----------------------------------------------------------------------------
def test_language_model_writes_caches_and_reuses_descriptions(tiny_causal_lm, tmp_path,
                                                              monkeypatch):
    from transformers import AutoModelForCausalLM

    classes = ["circle", "square"]
    source = LanguageModelDescriptions(str(tiny_causal_lm), num_per_class=3, max_new_tokens=10,
                                       seed=0, cache_dir=tmp_path / "cache", batch_size=3)
    first = source(classes)
    assert list(first.by_class) == classes
    assert all(len(v) == 3 and len(set(v)) == 3 for v in first.phrases.values())
    provenance = first.provenance
    assert provenance["source"] == "language_model" and provenance["cache_hit"] is False
    assert provenance["model"]["name_or_path"] == str(tiny_causal_lm.resolve())
    assert provenance["prompt"] == source.prompt and provenance["classes"] == classes
    assert provenance["settings"]["temperature"] == 0.7
    cache_files = list((tmp_path / "cache").glob("*.json"))
    assert len(cache_files) == 1
    stored = json.loads(cache_files[0].read_text())
    assert stored["phrases"] == first.phrases and stored["provenance"]["prompt"] == source.prompt

    def no_model(*args, **kwargs):
        raise AssertionError("a cache hit loaded the model")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
    second = LanguageModelDescriptions(str(tiny_causal_lm), num_per_class=3, max_new_tokens=10,
                                       seed=0, cache_dir=tmp_path / "cache", batch_size=3)(classes)
    assert second.by_class == first.by_class and second.provenance["cache_hit"] is True
    # any change to what shaped the text is another cache entry (and would load the model)
    with pytest.raises(AssertionError, match="loaded the model"):
        LanguageModelDescriptions(str(tiny_causal_lm), num_per_class=3, max_new_tokens=10,
                                  seed=0, cache_dir=tmp_path / "cache",
                                  prompt="Describe a {class_name}:\n-")(classes)
    with pytest.raises(AssertionError, match="loaded the model"):
        LanguageModelDescriptions(str(tiny_causal_lm), num_per_class=3, max_new_tokens=10,
                                  seed=0, cache_dir=tmp_path / "cache")(["circle", "triangle"])


def test_language_model_is_seeded(tiny_causal_lm, tmp_path):
    def generate(seed, cache):
        return LanguageModelDescriptions(str(tiny_causal_lm), num_per_class=2, max_new_tokens=8,
                                         seed=seed, cache_dir=tmp_path / cache)(["circle"]).phrases

    assert generate(0, "a") == generate(0, "b")
    assert generate(0, "a") != generate(5, "c")


def test_language_model_errors(make_cfg):
    from lmvision.checks import ArgumentError
    from lmvision.config.build import text_recipe

    with pytest.raises(ArgumentError, match="^prompt: must contain \\{class_name\\}$"):
        LanguageModelDescriptions("gpt2", prompt="Describe it")
    with pytest.raises(ArgumentError, match="^num_per_class=0: expected a whole number, at least 1$"):
        LanguageModelDescriptions("gpt2", num_per_class=0)
    with pytest.raises(ArgumentError, match="^device='gpu': choose auto, cpu, cuda or cuda:<n>$"):
        LanguageModelDescriptions("gpt2", device="gpu")
    with pytest.raises(ArgumentError, match="^top_p=1.5: expected a number in \\(0, 1\\]$"):
        LanguageModelDescriptions("gpt2", top_p=1.5)
    # built from a config, the message names the option the user wrote
    with pytest.raises(UserError, match="^descriptions.device='gpu': choose auto, cpu, cuda"):
        text_recipe(make_cfg("experiment=aux_text_shapes", "descriptions=language_model",
                             "descriptions.device=gpu"))
    with pytest.raises(UserError, match="descriptions.name_or_path='/no/such/model'"):
        LanguageModelDescriptions("/no/such/model", cache_dir="/tmp/unused").generate(["cat"])
