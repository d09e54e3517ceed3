"""GLMChineseTokenizer: sentencepiece pieces plus GLM's special tokens; GLM's model inputs come from ``glm_layout``.

The special-token table is the original GLM ``ChineseSPTokenizer``'s: with ``N`` the
sentencepiece size, ``<|endoftext|>`` is ``N``, ``[SEP]`` ``N+1``, ... ``[gMASK]``
``N+9`` (see :data:`SPECIAL_TOKENS`). An ``added_tokens.json`` overrides it.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import paddle
import sentencepiece as spm

from .config import CONFIG_NAME
from .errors import GLMError
from .glm_layout import ID_DTYPE, generation_inputs, multiple_choice_inputs, target_inputs
from .io_utils import atomic_write_bytes, atomic_write_text, read_json_object, require_local_dir

MODEL_FILE = "cog-pretrain.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
ADDED_TOKENS_FILE = "added_tokens.json"
# tokenizer_config.json's "tokenizer_class", which PaddleNLP's AutoTokenizer reads.
TOKENIZER_CLASS = "GLMChineseTokenizer"

EOS_TOKEN = "<|endoftext|>"
SEP_TOKEN = "[SEP]"
CLS_TOKEN = "[CLS]"
MASK_TOKEN = "[MASK]"
SOP_TOKEN = "<|startofpiece|>"
EOP_TOKEN = "<|endofpiece|>"
SMASK_TOKEN = "[sMASK]"
GMASK_TOKEN = "[gMASK]"
# In id order: the token at index i has id N + i (N = the sentencepiece size).
SPECIAL_TOKENS = (EOS_TOKEN, SEP_TOKEN, CLS_TOKEN, MASK_TOKEN, "[UNUSED1]", "[UNUSED2]",
                  SOP_TOKEN, EOP_TOKEN, SMASK_TOKEN, GMASK_TOKEN)
MASK_TOKENS = (MASK_TOKEN, SMASK_TOKEN, GMASK_TOKEN)


def with_mask(text: str) -> str:
    """``text``, with ``[gMASK]`` appended when it has no mask token (left-to-right generation),
    as the CLI, the server and the finetuning data treat a text without a blank."""
    return text if any(token in text for token in MASK_TOKENS) else text + GMASK_TOKEN
# The ids encode() adds around a text: [CLS] and <|endoftext|>.
TEXT_SPECIAL_IDS = 2
# A target span needs room for <|startofpiece|> and <|endofpiece|> (PaddleNLP's rule).
TARGET_SPAN_SPECIAL_IDS = 2

IdsLike = Union[Sequence[int], np.ndarray, paddle.Tensor]


class BatchEncoding(dict):
    """The tokenizer's output: a dict whose keys also read as attributes (``batch.input_ids``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class GLMChineseTokenizer:
    """The glm-10b-chinese / glm-large-chinese tokenizer.

    A text becomes ``[CLS] + pieces + <|endoftext|>``. Special-token strings inside
    the text (``[MASK]``, ``[sMASK]``, ``[gMASK]``, ``<|endoftext|>``, ...) become their
    single ids; each chunk of text between them is encoded by sentencepiece on its
    own, and whitespace left of a mask token is dropped.

    Unlike PaddleNLP 2.8.1's tokenizer, this one:

    * gives the special tokens their GLM ids when built on a bare sentencepiece file
      (PaddleNLP maps them all to 0);
    * keeps whitespace right of special tokens and left of non-mask special tokens
      (PaddleNLP strips both sides of every special token);
    * does not lowercase: ``tokenizer_config.json`` is kept for :meth:`save_pretrained`
      but its keys (``do_lower_case`` among them) are not interpreted;
    * reports :attr:`vocab_size` as every id it knows, ``N + 10``, not ``N``.

    Args:
        model_file: the sentencepiece model (``cog-pretrain.model``).
        added_tokens: ``{token: id}`` overriding or extending the special-token table.
        tokenizer_config: the contents of ``tokenizer_config.json``, written back by
            :meth:`save_pretrained`.
    """

    def __init__(self, model_file: str, added_tokens: Optional[Mapping[str, int]] = None,
                 tokenizer_config: Optional[Mapping[str, Any]] = None):
        try:
            with open(model_file, "rb") as f:
                self._model_proto = f.read()
            self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
        except (OSError, RuntimeError) as e:
            raise GLMError(f"{model_file}: cannot load the sentencepiece model ({e})") from e
        self.num_pieces = self._sp.get_piece_size()
        if not self._model_proto or self.num_pieces == 0:
            raise GLMError(f"{model_file}: empty sentencepiece model ({len(self._model_proto)} bytes, "
                           f"{self.num_pieces} pieces); copy {MODEL_FILE} from the model's files again")
        self._token_to_id = {token: self.num_pieces + i for i, token in enumerate(SPECIAL_TOKENS)}
        self._token_to_id.update(_checked_added_tokens(added_tokens or {}, "added_tokens"))
        self._id_to_token: Dict[int, str] = {}
        for token, token_id in self._token_to_id.items():
            if token_id in self._id_to_token:
                raise GLMError(f"added_tokens ({ADDED_TOKENS_FILE}): {self._id_to_token[token_id]!r} and {token!r} "
                               f"both have id {token_id}; give every special token its own id")
            self._id_to_token[token_id] = token
        by_length = sorted(self._token_to_id, key=len, reverse=True)  # longest first: no token eats another
        self._special_re = re.compile("(" + "|".join(map(re.escape, by_length)) + ")")
        self.tokenizer_config = dict(tokenizer_config or {})

    # ----- loading and saving

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike]) -> GLMChineseTokenizer:
        """Load from a local directory with ``cog-pretrain.model`` and, optionally,
        ``tokenizer_config.json`` and ``added_tokens.json``.

        Raises:
            GLMError: ``path`` is not a local directory (hub names are not downloaded)
                or a file is missing or malformed.
        """
        path = os.fspath(path)
        require_local_dir(path, "tokenizer")
        model_file = os.path.join(path, MODEL_FILE)
        if not os.path.isfile(model_file):
            raise GLMError(f"{path}: no {MODEL_FILE} (the sentencepiece model); copy it from the model's files")
        config_file = os.path.join(path, TOKENIZER_CONFIG_FILE)
        added_file = os.path.join(path, ADDED_TOKENS_FILE)
        config = read_json_object(config_file) if os.path.isfile(config_file) else None
        added = read_json_object(added_file) if os.path.isfile(added_file) else None
        if added is not None:
            added = _checked_added_tokens(added, added_file)
        tokenizer = cls(model_file, added_tokens=added, tokenizer_config=config)
        vocab_size = _model_vocab_size(os.path.join(path, CONFIG_NAME))
        if vocab_size is not None:
            check_tokenizer_fits(tokenizer, vocab_size, f"the model's {CONFIG_NAME} in {path}",
                                 added_file if added is not None else None)
        return tokenizer

    def save_pretrained(self, path: Union[str, os.PathLike]) -> None:
        """Write ``cog-pretrain.model``, ``tokenizer_config.json`` and ``added_tokens.json``
        (the full special-token table) into ``path``, each file atomically.

        PaddleNLP's ``GLMChineseTokenizer.from_pretrained`` reads the result with the
        right special ids.
        """
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise GLMError(f"{path}: exists and is not a directory")
        os.makedirs(path, exist_ok=True)
        config = {**self.tokenizer_config, "tokenizer_class": TOKENIZER_CLASS}
        added = dict(sorted(self._token_to_id.items(), key=lambda item: item[1]))
        atomic_write_bytes(os.path.join(path, MODEL_FILE), self._model_proto)
        atomic_write_text(os.path.join(path, TOKENIZER_CONFIG_FILE), _to_json(config))
        atomic_write_text(os.path.join(path, ADDED_TOKENS_FILE), _to_json(added))

    # ----- ids

    @property
    def vocab_size(self) -> int:
        """The number of ids: the sentencepiece pieces and the special tokens (``N + 10`` by default).

        Ids below it are valid; the model's embedding may be larger (50048 for 50010).
        """
        return max(self.num_pieces, max(self._id_to_token) + 1)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> Dict[str, int]:
        """``{token: id}`` for every special token."""
        return dict(self._token_to_id)

    @property
    def eos_token_id(self) -> int:
        """``<|endoftext|>``: the end of a text."""
        return self._token_to_id[EOS_TOKEN]

    @property
    def pad_token_id(self) -> int:
        """``<|endoftext|>``, also used for padding."""
        return self._token_to_id[EOS_TOKEN]

    @property
    def sep_token_id(self) -> int:
        """``[SEP]``."""
        return self._token_to_id[SEP_TOKEN]

    @property
    def cls_token_id(self) -> int:
        """``[CLS]``: the start of a text."""
        return self._token_to_id[CLS_TOKEN]

    @property
    def mask_token_id(self) -> int:
        """``[MASK]``: a short blank (a word or phrase)."""
        return self._token_to_id[MASK_TOKEN]

    @property
    def smask_token_id(self) -> int:
        """``[sMASK]``: a sentence-long blank."""
        return self._token_to_id[SMASK_TOKEN]

    @property
    def gmask_token_id(self) -> int:
        """``[gMASK]``: left-to-right generation from the end of the text."""
        return self._token_to_id[GMASK_TOKEN]

    @property
    def mask_token_ids(self) -> List[int]:
        """The ids of ``[MASK]``, ``[sMASK]`` and ``[gMASK]``."""
        return [self._token_to_id[token] for token in MASK_TOKENS]

    @property
    def sop_token_id(self) -> int:
        """``<|startofpiece|>``: opens a generated span."""
        return self._token_to_id[SOP_TOKEN]

    @property
    def eop_token_id(self) -> int:
        """``<|endofpiece|>``: closes a generated span (the stop token of generation)."""
        return self._token_to_id[EOP_TOKEN]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[int, List[int]]:
        """Special tokens or sentencepiece pieces (``"▁"``-prefixed) to ids; an unknown piece gives
        sentencepiece's unknown id."""
        if isinstance(tokens, str):
            return self._token_to_id[tokens] if tokens in self._token_to_id else self._sp.piece_to_id(tokens)
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, IdsLike]) -> Union[str, List[str]]:
        """Ids to special tokens or sentencepiece pieces."""
        if isinstance(ids, (int, np.integer)):
            token_id = self._checked_id(int(ids))
            return self._id_to_token.get(token_id) or self._sp.id_to_piece(token_id)
        return [self.convert_ids_to_tokens(token_id) for token_id in _id_list(ids, "ids")]

    # ----- encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """The ids of one text: ``[CLS] + pieces + <|endoftext|>`` (just the pieces and special
        tokens found in the text when ``add_special_tokens`` is False)."""
        if not isinstance(text, str):
            raise GLMError(f"text: expected a string, got {type(text).__name__}")
        parts = self._special_re.split(text)  # text, token, text, token, ..., text
        ids: List[int] = []
        for i in range(0, len(parts), 2):
            chunk = parts[i]
            next_token = parts[i + 1] if i + 1 < len(parts) else None
            if next_token in MASK_TOKENS:
                chunk = chunk.rstrip()
            if chunk:
                ids.extend(self._sp.encode(chunk))
            if next_token is not None:
                ids.append(self._token_to_id[next_token])
        if add_special_tokens:
            ids = [self.cls_token_id] + ids + [self.eos_token_id]
        return ids

    def __call__(self, text: Union[str, Sequence[str]], return_tensors: Optional[str] = None,
                 padding: Union[bool, str] = False, max_length: Optional[int] = None, truncation: bool = False,
                 add_special_tokens: bool = True) -> BatchEncoding:
        """Encode a text or a list of texts.

        Args:
            text: a string, or a list of strings (a batch).
            return_tensors: None for Python lists, "np" for int64 numpy arrays, "pd" for
                int64 paddle tensors. With arrays a single string gives a batch of one, ``[1, L]``;
                with lists it gives flat lists.
            padding: False (no padding: arrays then need equal lengths), True or "longest"
                (to the longest text), or "max_length" (to ``max_length``). Padding is on the
                right with ``<|endoftext|>`` and attention 0.
            max_length: the length for ``padding="max_length"`` and ``truncation``.
            truncation: drop ids from the left of each text so that it fits ``max_length``,
                keeping ``[CLS]`` and the final ``<|endoftext|>``.
            add_special_tokens: add ``[CLS]`` and ``<|endoftext|>``.

        Returns:
            A :class:`BatchEncoding` with ``input_ids`` and ``attention_mask``.

        Raises:
            GLMError: a bad argument, or truncation would remove every mask token of a text.
        """
        texts = _as_texts(text)
        to_array = None if return_tensors is None else _array_maker(return_tensors)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise GLMError(f"max_length: expected a positive int, got {max_length!r}")
        if truncation not in (True, False):
            raise GLMError(f"truncation: expected True or False, got {truncation!r}")
        rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if truncation:
            if max_length is None:
                raise GLMError("truncation=True needs max_length")
            rows = [self._truncate_left(row, max_length, add_special_tokens, i) for i, row in enumerate(rows)]
        length = _padded_length(rows, padding, max_length)
        if length is None and return_tensors is not None and len({len(row) for row in rows}) > 1:
            raise GLMError("the texts have different lengths; pass padding=True to return "
                           f"return_tensors={return_tensors!r} arrays")
        masks = [[1] * len(row) for row in rows]
        if length is not None:
            masks = [mask + [0] * (length - len(mask)) for mask in masks]
            rows = [row + [self.pad_token_id] * (length - len(row)) for row in rows]
        if to_array is None:
            single = isinstance(text, str)
            return BatchEncoding(input_ids=rows[0] if single else rows, attention_mask=masks[0] if single else masks)
        return BatchEncoding(input_ids=to_array(rows), attention_mask=to_array(masks))

    def _truncate_left(self, row: List[int], max_length: int, add_special_tokens: bool, index: int) -> List[int]:
        """Cut ``row`` to ``max_length`` ids from the left of its text, keeping ``[CLS]`` and ``<|endoftext|>``."""
        if len(row) <= max_length:
            return row
        num_special = TEXT_SPECIAL_IDS if add_special_tokens else 0
        if max_length < num_special:
            raise GLMError(f"max_length={max_length} cannot hold [CLS] and <|endoftext|>")
        head, body, tail = (row[:1], row[1:-1], row[-1:]) if add_special_tokens else ([], row, [])
        kept = body[len(body) - (max_length - num_special):]
        mask_ids = set(self.mask_token_ids)
        if mask_ids.intersection(body) and not mask_ids.intersection(kept):
            raise GLMError(f"text {index}: truncating it from the left to max_length={max_length} would remove "
                           "every mask token ([MASK], [sMASK], [gMASK]); raise max_length or shorten the text "
                           "before the mask")
        return head + kept + tail

    # ----- decoding

    def decode(self, ids: IdsLike, skip_special_tokens: bool = False) -> str:
        """The text of a 1-D sequence of ids (a list, numpy array or paddle tensor).

        Special tokens appear as their strings (or are dropped with
        ``skip_special_tokens``); the ids between them are decoded by sentencepiece.
        Nothing is inserted between the pieces, so ``decode(encode(text))`` is
        ``"[CLS]" + text + "<|endoftext|>"`` for text without special tokens (exactly, given
        a sentencepiece model that round-trips the text itself; whitespace left of a mask
        token is lost in encoding).
        """
        parts: List[str] = []
        run: List[int] = []
        for token_id in _id_list(ids, "ids"):
            token = self._id_to_token.get(self._checked_id(token_id))
            if token is None:
                run.append(token_id)
                continue
            if run:
                parts.append(self._sp.decode(run))
                run = []
            if not skip_special_tokens:
                parts.append(token)
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    def batch_decode(self, sequences: Union[Sequence[IdsLike], np.ndarray, paddle.Tensor],
                     skip_special_tokens: bool = False) -> List[str]:
        """:meth:`decode` each sequence of a batch (a list of sequences or a 2-D array or tensor)."""
        if isinstance(sequences, paddle.Tensor):
            sequences = sequences.numpy()
        if isinstance(sequences, np.ndarray) and sequences.ndim != 2:
            raise GLMError(f"sequences: expected a 2-D [batch, length] array, got shape {list(sequences.shape)}")
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def _checked_id(self, token_id: int) -> int:
        if token_id in self._id_to_token or 0 <= token_id < self.num_pieces:
            return token_id
        raise GLMError(f"ids: {token_id} is not a token id of this tokenizer (ids 0..{self.num_pieces - 1} are "
                       f"sentencepiece pieces, special tokens are {sorted(self._id_to_token)}); a model's "
                       "vocabulary padded past the tokenizer's never holds real tokens")

    # ----- GLM model inputs

    def build_inputs_for_generation(self, batch: Mapping[str, Any], max_gen_length: int = 512,
                                    targets: Optional[Union[str, Sequence[str]]] = None,
                                    padding: bool = False) -> BatchEncoding:
        """GLM blank-infilling inputs for the output of :meth:`__call__`.

        The span starts with ``<|startofpiece|>`` and takes the position of the first mask
        token (``[MASK]``, ``[sMASK]`` or ``[gMASK]``) of each row; its block positions
        count ``1..G``. Every row sees the real (unpadded) context; the span is causal.

        Args:
            batch: ``input_ids`` and ``attention_mask``, ``[b, L]`` (or ``[L]`` for one
                text), as paddle tensors, numpy arrays or lists.
            max_gen_length: ``G``, the most tokens to generate (or, with ``targets``, the
                longest span).
            targets: a text or one text per row: build teacher-forced inputs for
                training or scoring. Each target is cut on the right to ``G - 2`` ids, then
                ``<|endofpiece|>`` is appended. (PaddleNLP 2.8.1 means to cut on the right
                too, but its tokenizer ignores the argument and cuts on the left.)
            padding: with ``targets``, make every span ``G`` long (else as long as the
                longest target + 1). Ignored without targets.

        Returns:
            A :class:`BatchEncoding` of paddle tensors if ``batch["input_ids"]`` is a paddle
            tensor, else of numpy arrays:

            * ``input_ids``: ``[b, L+1]``, the context + ``<|startofpiece|>``
              (with targets ``[b, L+G]``: the context + ``<|startofpiece|>`` + target);
            * ``position_ids``: ``[b, 2, L+G]``;
            * ``attention_mask``: ``[b, 1, L+G, L+G]`` of 0/1;
            * with targets only: ``labels`` ``[b, L+G]`` (also under PaddleNLP's name
              ``label_ids``; 0 over the context, the next target id over the span, padded
              with ``<|endoftext|>``) and ``loss_mask`` ``[b, L+G]`` (1 where ``labels`` is a
              target id or the closing ``<|endofpiece|>``).

        Raises:
            GLMError (a ValueError): a row has no mask token (add ``[gMASK]`` for
                left-to-right generation), or a bad argument.
        """
        input_ids, attention_mask, to_output = _context_arrays(batch)
        if not isinstance(max_gen_length, int) or max_gen_length < 1:
            raise GLMError(f"max_gen_length: expected a positive int, got {max_gen_length!r}")
        if targets is None:
            arrays = generation_inputs(input_ids, attention_mask, self.mask_token_ids, self.sop_token_id,
                                       max_gen_length)
        else:
            if max_gen_length < TARGET_SPAN_SPECIAL_IDS:
                raise GLMError(f"max_gen_length: must be at least {TARGET_SPAN_SPECIAL_IDS} with targets "
                               "(<|startofpiece|> and <|endofpiece|>)")
            texts = _as_texts(targets)
            target_ids = [self.encode(text, add_special_tokens=False)[:max_gen_length - TARGET_SPAN_SPECIAL_IDS]
                          for text in texts]
            arrays = target_inputs(input_ids, attention_mask, target_ids, self.mask_token_ids, self.sop_token_id,
                                   self.eop_token_id, self.pad_token_id, max_gen_length, padding=padding)
            arrays["label_ids"] = arrays["labels"]
        return BatchEncoding({key: to_output(value) for key, value in arrays.items()})

    def build_inputs_for_multiple_choice(self, batch: Mapping[str, Any],
                                         choices: Sequence[Sequence[str]]) -> BatchEncoding:
        """GLM cloze-scoring inputs: each row's choices become spans filling its first mask token.

        Args:
            batch: ``input_ids`` and ``attention_mask`` ``[b, L]``, as for
                :meth:`build_inputs_for_generation`.
            choices: per row, a list of choice texts (encoded without special tokens).

        Returns:
            A :class:`BatchEncoding` (paddle tensors for paddle input, else numpy) with
            ``input_ids`` ``[b, S]``, ``position_ids`` ``[b, 2, S]``, ``attention_mask``
            ``[b, 1, S, S]``, and per row lists ``choice_ids`` (each choice's ids, ``[c]``)
            and ``choice_indices`` (the positions ``[c]`` whose logits score those ids).
            See :func:`paddle_glm.glm_layout.multiple_choice_inputs`.
        """
        input_ids, attention_mask, to_output = _context_arrays(batch)
        if isinstance(choices, str) or any(isinstance(row, str) for row in choices):
            raise GLMError("choices: expected one list of choice strings per row, e.g. [['北京', '上海']]")
        choice_ids = [[self.encode(choice, add_special_tokens=False) for choice in row] for row in choices]
        arrays = multiple_choice_inputs(input_ids, attention_mask, choice_ids, self.mask_token_ids,
                                        self.sop_token_id, self.pad_token_id)
        for key in ("choice_ids", "choice_indices"):
            arrays[key] = [[to_output(ids) for ids in row] for row in arrays[key]]
        for key in ("input_ids", "position_ids", "attention_mask"):
            arrays[key] = to_output(arrays[key])
        return BatchEncoding(arrays)


def _as_texts(text: Union[str, Sequence[str]]) -> List[str]:
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise GLMError(f"text: expected a string or a non-empty list of strings, got {type(text).__name__}")
    return texts


def _padded_length(rows: List[List[int]], padding: Union[bool, str], max_length: Optional[int]) -> Optional[int]:
    """The length to pad every row to, or None for no padding."""
    longest = max(map(len, rows))
    if padding is False:
        return None
    if padding is True or padding == "longest":
        return longest
    if padding == "max_length":
        if max_length is None:
            raise GLMError('padding="max_length" needs max_length')
        if longest > max_length:
            raise GLMError(f"a text has {longest} ids, more than max_length={max_length}; pass truncation=True")
        return max_length
    raise GLMError(f'padding: expected False, True, "longest" or "max_length", got {padding!r}')


def _array_maker(return_tensors: str) -> Callable[[List[List[int]]], Any]:
    if return_tensors == "np":
        return lambda rows: np.asarray(rows, dtype=ID_DTYPE)
    if return_tensors == "pd":
        return lambda rows: paddle.to_tensor(rows, dtype=ID_DTYPE)
    raise GLMError(f'return_tensors: expected None, "np" or "pd", got {return_tensors!r}')


def _context_arrays(batch: Mapping[str, Any]):
    """``input_ids`` and ``attention_mask`` as ``[b, L]`` numpy arrays, and a function that
    converts outputs to the input's kind (paddle tensors on the input's place, or numpy)."""
    if not isinstance(batch, Mapping) or "input_ids" not in batch or "attention_mask" not in batch:
        raise GLMError("batch: expected the output of tokenizer(...): a dict with input_ids and attention_mask")
    ids = batch["input_ids"]
    try:
        input_ids = ids.numpy() if isinstance(ids, paddle.Tensor) else np.asarray(ids)
        mask = batch["attention_mask"]
        attention_mask = mask.numpy() if isinstance(mask, paddle.Tensor) else np.asarray(mask)
    except ValueError as e:
        raise GLMError(f"batch: the rows have different lengths; encode with padding=True ({e})") from e
    if input_ids.ndim == 1:  # one unbatched text: [L] -> [1, L]
        input_ids, attention_mask = input_ids[None], attention_mask[None]
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise GLMError(f"batch: expected input_ids and attention_mask of one shape [batch, length], got "
                       f"{list(input_ids.shape)} and {list(attention_mask.shape)}")
    if isinstance(ids, paddle.Tensor):
        place = ids.place
        return input_ids, attention_mask, lambda array: paddle.to_tensor(array, place=place)
    return input_ids, attention_mask, lambda array: array


def _id_list(ids: IdsLike, name: str) -> List[int]:
    """A 1-D list, array or tensor of ids as a list of Python ints."""
    if isinstance(ids, paddle.Tensor):
        ids = ids.numpy()
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise GLMError(f"{name}: expected a 1-D integer array, got {ids.dtype} of shape {list(ids.shape)}; "
                           "use batch_decode for a batch")
        return ids.tolist()
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, (int, np.integer)) for i in ids):
        raise GLMError(f"{name}: expected a flat list of int ids; use batch_decode for a batch")
    return [int(i) for i in ids]


def check_tokenizer_fits(tokenizer: GLMChineseTokenizer, vocab_size: int, model: str = "the model",
                         added_tokens_file: Optional[str] = None) -> None:
    """Raise GLMError unless every id of ``tokenizer`` has a row in a model of ``vocab_size`` ids.

    ``from_pretrained`` checks this against the ``config.json`` beside the tokenizer files;
    call it when pairing a tokenizer with a model from elsewhere (``model.config.vocab_size``).
    """
    if tokenizer.num_pieces > vocab_size:
        raise GLMError(f"the sentencepiece model has {tokenizer.num_pieces} pieces, but {model} has only "
                       f"{vocab_size} ids (vocab_size); this tokenizer is not the model's")
    too_big = {token: token_id for token, token_id in tokenizer.special_tokens.items() if token_id >= vocab_size}
    if too_big:
        token, token_id = max(too_big.items(), key=lambda item: item[1])
        source = added_tokens_file or f"{MODEL_FILE} ({tokenizer.num_pieces} pieces, then GLM's special tokens)"
        raise GLMError(f"{source}: token {token!r} has id {token_id}, at or above the vocab_size {vocab_size} of "
                       f"{model}; every id must be below it ({len(too_big)} token(s) are not)")


def _model_vocab_size(config_file: str) -> Optional[int]:
    """``vocab_size`` of a model's config.json, or None if there is none to read (the model's own
    loading reports a broken config)."""
    try:
        with open(config_file, encoding="utf-8") as f:
            vocab_size = json.load(f).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return None
    return vocab_size if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) else None


def _checked_added_tokens(added: Mapping[str, Any], source: str) -> Dict[str, int]:
    if not all(isinstance(token, str) and token for token in added):
        raise GLMError(f"{source}: every token must be a non-empty string")
    bad = {token: token_id for token, token_id in added.items()
           if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0}
    if bad:
        raise GLMError(f"{source}: ids must be non-negative ints, got {bad}")
    return dict(added)


def _to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
