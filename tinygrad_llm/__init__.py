"""The LLM stack of "Build a Large Language Model from Scratch" on the autograd library.

The package follows the order a learner meets it:

    text/       bpe, tokenizer, gpt2_files (byte-level BPE), data (sliding windows)    book chapter 2
                hf_tokenizer, hf_files, chat (the Llama family's tokenizers and chat templates)
    models/     gpt (chapters 3-4), generate (chapters 4-5), gpt2_weights (chapter 5)
                llama, llama_config, llama_weights (Llama 3, SmolLM2, Qwen3), pretrained (load_pretrained)
    training/   the loop (chapter 5, appendix D), its checkpoints and run folder
    finetune/   classify_data + classifier (chapter 6), instruct + judge (chapter 7), lora (appendix E)
    support/    what a command line needs: cli (flags, errors), download, distributed (MPI)

The names a script needs most are here too: `from tinygrad_llm import GPT, GPTConfig, get_tokenizer`.
"""

import importlib
import importlib.abc
import importlib.util
import sys

import autograd.backend  # noqa: F401  (first: it tunes OpenBLAS's threads before NumPy loads)

# name -> the module that defines it, imported on first use so that `import tinygrad_llm` stays cheap
_PUBLIC = {
    "BPETokenizer": "text.tokenizer", "get_tokenizer": "text.tokenizer",
    "GPTDataset": "text.data", "DataLoader": "text.data", "create_dataloader": "text.data",
    "GPT": "models.gpt", "GPTConfig": "models.gpt", "load_pretrained": "models.pretrained",
    "generate": "models.generate", "stream": "models.generate", "decode_stream": "models.generate",
    "Llama": "models.llama", "LlamaConfig": "models.llama",
    "TrainConfig": "training", "Trainer": "training", "train_simple": "training", "evaluate": "training", "lm_loss": "training",
    "GPTClassifier": "finetune.classifier",
    "apply_lora": "finetune.lora", "merge_lora": "finetune.lora",
}

# Modules that lived at the top of the package before it was grouped by stage: `import tinygrad_llm.model`
# and `from tinygrad_llm.train import Trainer` keep working and give the module where the code lives now.
_MOVED = {
    "tokenizer": "text.tokenizer", "data": "text.data",
    "model": "models.gpt", "generate": "models.generate", "weights": "models.gpt2_weights",
    "train": "training", "run_folder": "training.run_folder",
    "classify_data": "finetune.classify_data", "classifier": "finetune.classifier",
    "instruct": "finetune.instruct", "judge": "finetune.judge", "lora": "finetune.lora",
    "cli": "support.cli", "download": "support.download", "distributed": "support.distributed",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an import of an old path (`tinygrad_llm.model`) with the module at its new one."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module):
        pass  # the module is the one at its new path, already run


sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = sorted(_PUBLIC)
