"""Every file the loaders read, mutated (truncated, a byte flipped, a JSON value replaced by another
type or an absurd number): loading either works or raises the project's FileFormatError, one line
naming the file; never a KeyError, TypeError or other traceback."""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autograd.checkpoint import FileFormatError, read_metadata, save_checkpoint
from tinygrad_llm.models.gpt import GPT, GPTConfig
from tinygrad_llm.text.tokenizer import BPETokenizer

OTHER_VALUES = [None, True, "7", [], {}, -1, 0, 10**12, 1.5, [1, 2], {"a": 1}]


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("originals")
    BPETokenizer.train("the cat sat on the mat, the dog sat on the log. " * 20, 280).save(root / "tok")
    GPT(GPTConfig.preset("cpu-tiny", vocab_size=40, context_length=8, n_layers=1), seed=0).save_pretrained(root / "model")
    save_checkpoint(root / "ckpt.safetensors", {"w": GPT(GPTConfig.preset("cpu-tiny", vocab_size=40, context_length=8,
                                                                          n_layers=1)).wte.weight.data},
                    {"step": 3, "config": {"lr": 0.1}})
    return root


def _replace_json_value(data, choice, value):
    """`data` with the `choice`-th value (walking objects and lists) replaced by `value`."""
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:20]):
                walk(v, path + (i,))

    walk(data, ())
    path = paths[choice % len(paths)]
    if not path:
        return value
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("json"), st.integers(0, 10**6), st.sampled_from(OTHER_VALUES)),
)


def _mutate(path, mutation):
    raw = path.read_bytes()
    kind = mutation[0]
    if kind == "truncate":
        path.write_bytes(raw[:int(mutation[1] * len(raw))])
    elif kind == "flip":
        i = min(int(mutation[1] * len(raw)), len(raw) - 1)
        path.write_bytes(raw[:i] + bytes([raw[i] ^ mutation[2]]) + raw[i + 1:])
    elif path.suffix == ".safetensors":  # a JSON value inside the header
        n = int.from_bytes(raw[:8], "little")
        header = _replace_json_value(json.loads(raw[8:8 + n]), mutation[1], mutation[2])
        blob = json.dumps(header).encode()
        path.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])
    elif path.suffix == ".json":
        path.write_text(json.dumps(_replace_json_value(json.loads(raw), mutation[1], mutation[2])))
    else:  # vocab.bpe: a merge line replaced by a value's text
        lines = raw.decode("utf-8").split("\n")
        lines[mutation[1] % len(lines)] = json.dumps(mutation[2])
        path.write_text("\n".join(lines), encoding="utf-8")


def _loads_or_clean_error(load):
    try:
        load()
    except FileFormatError as e:
        assert "\n" not in str(e).strip() or "does not fit GPT" in str(e)  # the key list of a misfit is a list


CASES = [("tok", "encoder.json", lambda d: BPETokenizer.load(d)),
         ("tok", "vocab.bpe", lambda d: BPETokenizer.load(d)),
         ("model", "config.json", lambda d: GPT.from_pretrained(d)),
         ("model", "model.safetensors", lambda d: GPT.from_pretrained(d)),
         (None, "ckpt.safetensors", lambda f: read_metadata(f))]


@pytest.mark.parametrize("folder, name, load", CASES, ids=[c[1] for c in CASES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations)
def test_a_mutated_file_loads_or_raises_the_project_error(originals, tmp_path, folder, name, load, mutation):
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    if folder:
        shutil.copytree(originals / folder, work)
        _mutate(work / name, mutation)
        _loads_or_clean_error(lambda: load(work))
    else:
        work.mkdir()
        shutil.copy(originals / name, work / name)
        _mutate(work / name, mutation)
        _loads_or_clean_error(lambda: load(work / name))


@pytest.mark.parametrize("record", [{"kind": "tiktoken"}, ["gpt2"], "gpt2", {"kind": "sentencepiece", "name": "x"}])
def test_a_classifier_with_a_malformed_tokenizer_record_is_one_clear_error(tmp_path, record):
    from tinygrad_llm.finetune.classifier import GPTClassifier

    gpt = GPT(GPTConfig.preset("cpu-tiny", vocab_size=40, context_length=8, n_layers=1))
    GPTClassifier(gpt, 2, labels=["ham", "spam"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tokenizer"] = record
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match="config.json: the field tokenizer is"):
        GPTClassifier.from_pretrained(tmp_path)


def _instruction_entries(path):
    from tinygrad_llm.finetune.instruct import check_entries, load_entries

    return check_entries(load_entries(path))


def _spam_lines(path):
    from tinygrad_llm.finetune.classify_data import read_labeled_tsv

    return read_labeled_tsv(path)


DATA_CASES = [("data.json", json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)}
                                        for i in range(6)], indent=1), _instruction_entries),
              ("data.tsv", "".join(f"{'spam' if i % 3 else 'ham'}\tmessage number {i}\n" for i in range(8)),
               _spam_lines)]


@pytest.mark.parametrize("name, text, load", DATA_CASES, ids=[c[0] for c in DATA_CASES])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations)
def test_a_mutated_dataset_loads_or_raises_one_clear_line(tmp_path, name, text, load, mutation):
    """The instruction JSON and the spam TSV: the examples turn a ValueError into one `error:` line, so
    a mutated file must load or raise a ValueError of one line, never another exception."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    _mutate(path, mutation)
    try:
        load(path)
    except ValueError as e:
        assert "\n" not in str(e).strip()
