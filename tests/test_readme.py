"""The README's Library section runs as written, on a tiny random-init model in place of the hub model."""

import re
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

from langneurons.corpora import sample_corpus
from langneurons.demo_model import build_tokenizer
from langneurons.neuronset import NeuronSet, NeuronSpace

README = Path(__file__).resolve().parents[1] / "README.md"
MODEL_LINE = re.compile(r'^model_name = "[^"]+"', re.MULTILINE)


def library_block() -> str:
    """The first Python block of the README's "## Library" section."""
    section = README.read_text(encoding="utf-8").split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "the Library section has no python block"
    return blocks[0]


def _tiny_model_folder(path: Path) -> str:
    """A random-init Llama with a byte-level BPE tokenizer trained on the demo corpus, saved like a hub model."""
    texts = sample_corpus({"source": "demo"}, ["en", "fr", "zh"], {"train": 30}, seed=1)
    tokenizer = build_tokenizer([t for docs in texts.values() for t in docs["text"]], vocab_size=400, max_length=512)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_the_library_section_runs_as_written(tmp_path, monkeypatch, capsys):
    code = library_block()
    assert len(MODEL_LINE.findall(code)) == 1, "the block names its model in one `model_name = \"...\"` line"
    folder = _tiny_model_folder(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(MODEL_LINE.sub(f"model_name = {folder!r}", code), str(README), "exec"), namespace)
    fr = namespace["fr"]
    assert isinstance(fr, NeuronSet) and fr.languages == ["fr"] and fr.space == NeuronSpace.of(namespace["model"])
    assert NeuronSet.from_parquet(tmp_path / "fr_specific.parquet") == fr
    printed = capsys.readouterr().out
    assert "fr perplexity:" in printed and "without its French neurons:" in printed
