"""Text or JSONL -> megatron-core indexed dataset (``PREFIX.bin`` / ``PREFIX.idx``), tokenized in worker processes.

One document per paragraph of a text file or per JSONL line (see ``text_input``); each document is one sequence
of token ids with no special tokens (the MLM dataset adds [CLS]/[SEP] when it cuts blocks). Documents that
encode to nothing are skipped. Nothing is written unless the whole input converts.
"""
import multiprocessing
import os
import sys
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from megatron_vega.data.corpus import IndexedDatasetWriter
from megatron_vega.data.text_input import check_input_file, decode_document, is_jsonl, iter_raw_chunks, split_documents
from megatron_vega.data.tokenizer import VegaTokenizer
from megatron_vega.errors import VegaInputError

# Worker-process state, set once per worker by the Pool initializer (the tokenizer is too costly to send with
# every chunk). The main process never touches it.
_worker: dict = {}


@dataclass
class PreprocessResult:
    documents: int
    tokens: int
    text_bytes: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


@dataclass
class _Encoded:
    """A chunk's documents as one array of ids and the length of each (one array pickles much faster)."""
    ids: np.ndarray
    lengths: np.ndarray
    text_bytes: int
    error: tuple[str, str] | None = None  # (where, problem) of a VegaInputError raised in the worker

    def documents(self):
        return np.split(self.ids, np.cumsum(self.lengths)[:-1]) if len(self.lengths) else []


def _init_worker(tokenizer_model: str, input_path: str, json_keys: tuple[str, ...]) -> None:
    _worker.update(tokenizer=VegaTokenizer(tokenizer_model), path=input_path, json_keys=json_keys)


def _encode_chunk(first_line: int, chunk: bytes) -> _Encoded:
    path = _worker["path"]
    try:
        texts = [decode_document(path, line_no, raw, _worker["json_keys"])
                 for line_no, raw in split_documents(first_line, chunk, is_jsonl(path))]
    except VegaInputError as err:  # sent back as plain data: the exception itself does not pickle
        return _Encoded(np.zeros(0, np.int32), np.zeros(0, np.int64), len(chunk), (err.where, err.problem))
    docs = _worker["tokenizer"].encode_batch(texts)
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    ids = np.concatenate([np.asarray(d, dtype=np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return _Encoded(ids, lengths, len(chunk))


def _ordered_results(pool, chunks, window: int):
    """Pool results in input order, with at most ``window`` chunks in flight (``imap`` would read the whole
    input ahead into memory)."""
    pending = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_chunk, chunk))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def preprocess(input_path: str, output_prefix: str, tokenizer_model: str, workers: int,
               json_keys: tuple[str, ...] = ("text",), log_interval: int = 1000, chunk_bytes: int = 1 << 18,
               log=sys.stderr) -> PreprocessResult:
    """Write ``output_prefix``.bin/.idx; VegaInputError (and no output files) on bad input."""
    if workers < 1:
        raise VegaInputError("--workers", f"must be at least 1, got {workers}")
    check_input_file(input_path)
    tokenizer = VegaTokenizer(tokenizer_model)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    if not os.path.isdir(out_dir):
        raise VegaInputError(output_prefix, f"output directory {out_dir} does not exist")

    # Workers start before megatron.core is imported (by the writer), so they do not carry torch.
    with multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(tokenizer_model, input_path, json_keys)) as pool, \
            IndexedDatasetWriter(output_prefix, tokenizer.vocab_size) as writer:
        start = time.perf_counter()
        text_bytes = 0
        next_log = log_interval
        for encoded in _ordered_results(pool, iter_raw_chunks(input_path, chunk_bytes), 2 * workers):
            if encoded.error:
                raise VegaInputError(*encoded.error)
            for ids in encoded.documents():
                if len(ids):
                    writer.add_document(ids)
            text_bytes += encoded.text_bytes
            if log_interval > 0 and writer.documents >= next_log:
                next_log = (writer.documents // log_interval + 1) * log_interval
                elapsed = time.perf_counter() - start
                print(f"processed {writer.documents} documents, {writer.tokens} tokens "
                      f"({writer.tokens / elapsed:,.0f} tokens/s, {text_bytes / elapsed / 1e6:.2f} MB/s)",
                      file=log, flush=True)
        if writer.documents == 0:
            raise VegaInputError(input_path, "no documents (only blank lines or text that encodes to nothing)")
        writer.publish()
        return PreprocessResult(writer.documents, writer.tokens, text_bytes, time.perf_counter() - start)
