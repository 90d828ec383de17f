"""A tiny, real llama-architecture GGUF model for tests.

``build_tiny_gguf`` writes a ~0.47 MB model file that ``llama_cpp.Llama``
loads in milliseconds and generates with at thousands of tokens per second:

* architecture ``llama``: 2 layers, n_embd 64, 4 attention heads, 2 KV heads
  (grouped-query attention), n_ff 128, context length 2048, tied
  input/output embeddings, all tensors F32;
* weights drawn from normal distributions by ``numpy.random.default_rng(seed)``,
  so the same arguments always give a byte-identical file, and a fixed
  sampling seed gives reproducible output;
* a 605-token byte-level BPE vocabulary (tokenizer model ``gpt2``,
  pre-tokenizer ``gpt-2``): the 256 byte tokens in GPT-2 byte-to-unicode form
  (token id == byte value), then the tokens of the merges learnt from a small
  corpus, which make every corpus word a single token (" hello", " world",
  "user", "assistant", " café", " 日本語", " 😀", ...), then the control
  tokens ``<|endoftext|>`` (bos and eos, id 602), ``<|im_start|>`` (603) and
  ``<|im_end|>`` (604); no bos is added on tokenization;
* ``tokenizer.chat_template`` set to ``chat_template`` (ChatML by default),
  or absent when ``chat_template`` is None;
* ``general.name`` = ``"tiny-test"``;
* ``llama.pooling_type`` set when ``pooling`` is given (``"mean"``, ``"cls"`` or ``"last"``), so
  that an embedding context pools one vector per input (without it llama.cpp gives one per token).

The weights are random, so the model's text is gibberish: a mix of corpus
words, word pieces and ASCII characters, with the occasional whole non-ASCII
character; in practice it is valid UTF-8 and contains no control token or
character (see ``_tensors``), so generation runs until ``max_tokens`` or a
``stop`` string.

Command line: ``python -m tests.support.tiny_model OUT.gguf`` writes the file.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import gguf
import numpy as np

MODEL_NAME = "tiny-test"

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT_LENGTH = 2048
RMS_NORM_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0
WEIGHT_STD = 3.0
QUIET_SCALE = 0.3

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

#: ChatML. Renders exactly like llama-cpp-python's built-in "chatml" format,
#: but is deliberately not the same string as its ``CHATML_CHAT_TEMPLATE``:
#: llama-cpp-python then does not recognise it and renders the model's own
#: template through Jinja (chat format ``"chat_template.default"``).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = """
Hello world! hello world. Hello, how are you? I am fine, thank you. Hi there.
The quick brown fox jumps over the lazy dog. The dog is sleeping in the sun.
You are a helpful assistant. The user asks a question and the assistant
answers it. What is the capital of France? The capital of France is Paris.
Tell me a story about a cat and a dog. Once upon a time there was a little
cat that lived in a house with a big dog. They were good friends and they
played together every day. Count from one to ten: one, two, three, four,
five, six, seven, eight, nine, ten. This is a test of the server. Please
write a short poem about the sea. The sea is blue and the sky is bright.
Say something nice. What time is it? It is time to go home. Good morning,
good night, see you tomorrow. The system message tells the model what to do.
A café in Zürich serves crème brûlée – “naïve” 日本語 こんにちは 😀 👍 …
system
user
assistant
hello
"""

# GPT-2's pre-tokenizer regex, with Python's \w classes standing in for
# \p{L} and \p{N}.
_PRETOKENIZE = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from each byte value to a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_CHAR = _bytes_to_unicode()
_CHAR_BYTE = {c: b for b, c in _BYTE_CHAR.items()}


def _learn_merges(text: str) -> List[Tuple[str, str]]:
    """Learn BPE merges from ``text`` until each of its words is one token.

    Each step merges the most frequent adjacent pair of the pre-tokenized
    words, ties broken by the pair's lexical order, so the result is fixed.
    """
    words: collections.Counter = collections.Counter(
        tuple(_BYTE_CHAR[b] for b in piece.encode("utf-8"))
        for piece in _PRETOKENIZE.findall(text)
    )
    merges: List[Tuple[str, str]] = []
    while True:
        pairs: collections.Counter = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = collections.Counter(
            {_apply_merge(word, best): count for word, count in words.items()}
        )


def _apply_merge(word: Tuple[str, ...], pair: Tuple[str, str]) -> Tuple[str, ...]:
    """Replace every occurrence of ``pair`` in ``word`` by its concatenation."""
    merged: List[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def _vocabulary() -> Tuple[List[str], List[int], List[str]]:
    """Return (tokens, token types, merges) of the tiny BPE tokenizer."""
    merges = _learn_merges(_CORPUS)
    tokens = [_BYTE_CHAR[b] for b in range(256)]
    tokens += [left + right for left, right in merges]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    tokens += SPECIAL_TOKENS
    types += [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    return tokens, [int(t) for t in types], [f"{left} {right}" for left, right in merges]


def _is_plain_text(token: str) -> bool:
    """Whether a normal token's bytes are whole UTF-8 characters, none of them
    a control character other than newline."""
    try:
        text = bytes(_CHAR_BYTE[c] for c in token).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c == "\n" or (c >= " " and c != "\x7f") for c in text)


def _tensors(
    tokens: Sequence[str], token_types: Sequence[int], seed: int
) -> Iterable[Tuple[str, np.ndarray]]:
    """Yield (name, F32 array) for every tensor, in a fixed order.

    Weights are N(0, 1) for embeddings and N(0, WEIGHT_STD**2 / n_in) for
    projections: large enough that the layers, not the tied embeddings, decide
    the next token (otherwise the model just repeats its last token). The
    embeddings of control tokens and of tokens that are not plain text (lone
    bytes >= 0x80, pieces of a UTF-8 character, control characters) are
    scaled by QUIET_SCALE, so that the model practically never emits them
    unprompted and its output is valid UTF-8.

    Arrays use the numpy (row-major) shape, i.e. the reverse of ggml's ``ne``:
    a projection from n_in to n_out features is an (n_out, n_in) array.
    """
    rng = np.random.default_rng(seed)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    def matrix(rows: int, cols: int) -> np.ndarray:
        scale = WEIGHT_STD / np.sqrt(cols)
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(N_EMBD, dtype=np.float32)

    embeddings = rng.standard_normal((len(tokens), N_EMBD)).astype(np.float32)
    for token_id, (token, token_type) in enumerate(zip(tokens, token_types)):
        if token_type != gguf.TokenType.NORMAL or not _is_plain_text(token):
            embeddings[token_id] *= QUIET_SCALE
    yield "token_embd.weight", embeddings
    for layer in range(N_LAYERS):
        prefix = f"blk.{layer}."
        yield prefix + "attn_norm.weight", norm()
        yield prefix + "attn_q.weight", matrix(N_EMBD, N_EMBD)
        yield prefix + "attn_k.weight", matrix(n_embd_kv, N_EMBD)
        yield prefix + "attn_v.weight", matrix(n_embd_kv, N_EMBD)
        yield prefix + "attn_output.weight", matrix(N_EMBD, N_EMBD)
        yield prefix + "ffn_norm.weight", norm()
        yield prefix + "ffn_gate.weight", matrix(N_FF, N_EMBD)
        yield prefix + "ffn_up.weight", matrix(N_FF, N_EMBD)
        yield prefix + "ffn_down.weight", matrix(N_EMBD, N_FF)
    yield "output_norm.weight", norm()


def build_tiny_gguf(
    path: pathlib.Path,
    *,
    chat_template: Optional[str] = CHATML_TEMPLATE,
    architecture_name: str = "llama",
    seed: int = 0,
    pooling: Optional[str] = None,
) -> pathlib.Path:
    """Write the tiny test model to ``path`` (overwriting it) and return ``path``.

    ``chat_template`` becomes ``tokenizer.chat_template``; None omits the key,
    for tests of models without a template. ``seed`` seeds the random
    weights; equal arguments produce byte-identical files. ``pooling``
    ("mean", "cls" or "last") becomes the model's pooling type for embeddings.
    ``architecture_name`` must be ``"llama"``, the only architecture whose
    tensor layout this module writes (llama.cpp refuses unknown names).
    """
    if architecture_name != "llama":
        raise ValueError(f"unsupported architecture {architecture_name!r}: only 'llama'")
    path = pathlib.Path(path)
    tokens, token_types, merges = _vocabulary()

    writer = gguf.GGUFWriter(str(path), architecture_name)
    writer.add_name(MODEL_NAME)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_NORM_EPS)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index(ENDOFTEXT))
    writer.add_eos_token_id(tokens.index(ENDOFTEXT))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType[pooling.upper()])

    for name, array in _tensors(tokens, token_types, seed):
        writer.add_tensor(name, array)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: Optional[Sequence[str]] = None) -> None:
    """CLI: ``python -m tests.support.tiny_model OUT.gguf [--seed N] [--no-chat-template]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--no-chat-template",
        action="store_true",
        help="omit tokenizer.chat_template",
    )
    args = parser.parse_args(argv)
    template = None if args.no_chat_template else CHATML_TEMPLATE
    out = build_tiny_gguf(args.out, chat_template=template, seed=args.seed)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
