"""LM-loss filter: how plausible a clip's transcript is to a small chat LM (docs/recipes.md#lm_loss).

Source: ``data/production/lm_loss.py`` in showlab/livecc (the paper's text filter). Each clip
becomes a three-turn chat for ``Qwen/Qwen2-1.5B-Instruct``:

* system: ``You are a helpful assistant.``
* user, without a previous transcription:
  ``Video Title: {title}\\nPlease try to output the possible speech transcription of the video from start to end.``
* user, with one:
  ``Video Title: {title}\\nPrevious transcription: {previous}\\nPlease try to output the possible
  speech transcription of the video following previous transcription.``
* assistant: the clip's words, each stripped, joined by single spaces.

``lm_loss`` is the mean token cross-entropy (nats) of the assistant tokens under the model,
computed as the reference computes it, quirks included:

1. **Label slice.** The reference finds the ``assistant`` token that follows ``<|im_start|>``
   at index *a* and labels ``input_ids[a+2:-2]``: it skips the newline after ``assistant`` and
   leaves out the last two tokens of the sequence, which the chat template makes
   ``<|im_end|>`` and the newline after it. The end-of-turn token is never scored ("do not
   count eos"). Here the assistant header is located template-agnostically (the tokens of the
   chat rendered up to ``<|im_start|>assistant\\n``, checked to be a prefix of the full chat),
   so the same slice works for tokenizers where ``assistant`` is several tokens (SmolLM2).
2. **The ``> 0`` mask.** Its loss function sums the cross-entropy over every labelled token
   but divides by ``(labels > 0).sum()``: tokens with id 0 are in the numerator and not in the
   denominator. In Qwen2's vocabulary id 0 is ``!``, so a clip with standalone ``!`` tokens
   scores slightly higher. ``mode: compat`` (default) reproduces this; ``mode: precise``
   divides by the number of labelled tokens.
3. **Previous.** The reference picks the template by whether the JSON line *has* a
   ``previous`` key; every clip row has the column, so an empty ``previous`` (a clip at the
   start of its video) uses the first template here.
4. **Truncation.** The reference tokenises with ``truncation=True``, cutting the chat at the
   tokenizer's ``model_max_length`` (32,768 for Qwen2) from the *right*, i.e. into the clip
   text. Here a chat longer than ``max_tokens`` (capped by the model's position limit) loses
   tokens from the *start* of ``previous`` instead, so the clip is always scored whole; this
   only differs for chats beyond 32k tokens (an hour of previous speech).

Decision: keep ``min_loss <= lm_loss <= max_loss``; the reference's SFT corpus used 1.5-5
(``filter(1.5, 5)``), its pre-training corpus 1.5-6.5 (the file name
``livecc_30-240s_wps1-4_ppl1.5-6.5_videos.json`` in ``distributed_lmm4asd.py``):
:class:`LmLossFilter` (SFT) and :class:`PretrainLmLossFilter` differ only in that default. Rejection reasons:
``lm_loss_out_of_range`` (the row carries its ``lm_loss``), ``no_words``,
``lm_loss_undefined`` (no token left to score). Every kept and rejected clip records
``lm_loss``.

Speed (millions of clips): one model per actor, loaded in ``setup()``. The clips of one video
share the system turn, the title and the start of their previous transcriptions: that prefix
runs once with a KV cache and each clip runs only its remaining tokens on it
(``share_prefix``, :func:`prefix_chains`). The other clips are sorted by token length and cut
into batches of at most ``max_batch_tokens`` padded tokens, so padding stays small; right
padding under causal attention needs no mask (a real token never sees a pad), so a clip's loss
does not depend on its batch or its prefix sharing (a test checks alone vs. batched vs. shared
to 1e-4 on CPU). Only the scored positions go through the LM head (a 152k-entry vocabulary
times every token of a long ``previous`` would not fit), in float32 as the reference upcasts
its logits. On GPU the model runs in bfloat16 with FlashAttention-2 (SDPA when ``flash-attn``
is not installed), on CPU in float32.

Weights are never downloaded: ``model`` is a folder, a Hub id looked up under ``model_dir``,
``$LIVECC_MODEL_DIR`` and the Hugging Face cache (:func:`stages.models.resolve_checkpoint`),
or a ``.gguf`` file (loaded by ``transformers`` with ``gguf_file=``, needs the ``gguf``
package; the tests use SmolLM2-135M-Instruct this way). Missing weights fail ``setup()``
with the download command.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field, model_validator

import schemas
from pipeline.stage import Histogram, Rejected, Resources, Result, Stage, StageConfig
from stages.models import MissingWeightsError, model_fingerprint, resolve_checkpoint

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2-1.5B-Instruct"
SYSTEM_PROMPT = "You are a helpful assistant."
USER_PROMPT = ("Video Title: {title}\nPlease try to output the possible speech transcription of the video "
               "from start to end.")
USER_PROMPT_WITH_PREVIOUS = ("Video Title: {title}\nPrevious transcription: {previous}\nPlease try to output "
                             "the possible speech transcription of the video following previous transcription.")
#: Tokens the reference's slice ``[a+2:-2]`` leaves out at the end: ``<|im_end|>`` and ``\n``.
TRAILING_UNSCORED = 2
Mode = Literal["compat", "precise"]


class LmLossConfig(StageConfig):
    """Settings of :class:`LmLossFilter`: thresholds (reference SFT: 1.5-5), the model and
    how it runs (module docstring)."""
    runtime_fields: ClassVar[frozenset[str]] = frozenset(
        {"model_dir", "device", "attn_implementation", "max_batch_tokens", "max_batch_rows", "share_prefix"})

    min_loss: float = Field(1.5, description="lowest lm_loss kept, nats/token (reference: 1.5)")
    max_loss: float = Field(5.0, description="highest lm_loss kept, nats/token (reference SFT: 5; pre-training: 6.5)")
    mode: Mode = Field("compat", description="'compat': the reference's mean (token id 0 summed but not "
                       "counted); 'precise': the plain mean over the scored tokens")
    model: str = Field(DEFAULT_MODEL, description="Hub id, model folder, or a .gguf file")
    model_dir: str | None = Field(None, description="folder holding model folders (<model_dir>/<name>) or a "
                                  "Hugging Face cache; also $LIVECC_MODEL_DIR", json_schema_extra={"local_path": True})
    max_tokens: int = Field(32768, ge=64, description="longest chat in tokens (capped by the model's position "
                            "limit); longer ones lose the start of `previous` (reference: Qwen2's 32768)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash_attention_2 on cuda when flash-attn is installed, else sdpa")
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens per forward pass")
    max_batch_rows: int = Field(64, ge=1, description="clips per forward pass")
    share_prefix: bool = Field(True, description="score the clips of one video on one cached prefix "
                               "(system turn, title, common previous transcription) instead of recomputing it")

    @model_validator(mode="after")
    def _bounds(self) -> "LmLossConfig":
        if self.min_loss > self.max_loss:
            raise ValueError(f"min_loss ({self.min_loss}) > max_loss ({self.max_loss})")
        return self


class PretrainLmLossConfig(LmLossConfig):
    """:class:`LmLossConfig` with the reference's pre-training bound (``max_loss`` 6.5)."""

    max_loss: float = Field(6.5, description="highest lm_loss kept, nats/token (reference pre-training: 6.5)")


@dataclass
class Encoded:
    """One clip's chat as token ids; ``input_ids[label_start:label_end]`` are the scored
    (assistant) tokens. ``previous_cut_tokens``: tokens dropped from the start of ``previous``
    to fit ``max_tokens``."""
    input_ids: list[int]
    label_start: int
    label_end: int
    previous_cut_tokens: int = 0

    @property
    def n_scored(self) -> int:
        return max(0, self.label_end - self.label_start)


class LmLossFilter(Stage):
    """Chat-LM loss of each clip's words; keeps 1.5 <= lm_loss <= 5 (SFT; configurable).

    Module docstring; reference ``data/production/lm_loss.py``.

    ``setup`` raises :class:`MissingWeightsError` when the checkpoint is absent, ``ImportError``
    when ``transformers`` (the ``train`` extra) is not installed, ``ValueError`` when the
    tokenizer has no chat template.
    """

    name = "lm_loss"
    Config = LmLossConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    key_field = "clip_id"
    # One model per actor; on GPU nodes set stages.lm_loss.resources.num_gpus: 1. 512 clips per
    # call give the length sort room to form batches with little padding.
    resources = Resources(num_cpus=1, num_gpus=0, batch_size=512)
    report_histograms = {"lm_loss": Histogram("LM loss (nats per token)", ("lm_loss",))}

    config: LmLossConfig

    def __init__(self, config: LmLossConfig, context):
        super().__init__(config, context)
        self.scorer: "LossScorer | None" = None
        self.model_path = ""

    def fingerprint(self) -> Any:
        """The LM's files: part of every part's key (docs/architecture.md, "Parts and lineage")."""
        cfg = self.config
        gguf = cfg.model.endswith(".gguf")
        return model_fingerprint(lambda: cfg.model if gguf and os.path.isfile(cfg.model) else
                                 resolve_model_path(cfg.model, cfg.model_dir, stage=self.name), cfg.model)

    def setup(self) -> None:
        """Find and load the tokenizer and model once per actor (no download)."""
        cfg = self.config
        self.scorer = LossScorer.load(cfg.model, model_dir=cfg.model_dir, device=cfg.device,
                                      attn_implementation=cfg.attn_implementation, stage=self.name)
        self.model_path = self.scorer.source
        log.info("lm_loss: %s on %s (%s, %s)", self.scorer.source, self.scorer.device, self.scorer.dtype,
                 self.scorer.attn_implementation)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """Rows of :data:`schemas.CLIPS` -> the same rows with ``lm_loss``, or ``Rejected``
        (``lm_loss_out_of_range``, ``no_words``, ``lm_loss_undefined``); a row whose chat
        cannot be encoded (e.g. the clip alone exceeds ``max_tokens``) is an error."""
        if self.scorer is None:
            self.setup()
        cfg = self.config
        out: list[Result | BaseException | None] = [None] * len(rows)
        todo: list[int] = []
        encoded: list[Encoded] = []
        texts = [clip_text(r.get("words")) for r in rows]
        for i, row in enumerate(rows):
            if not texts[i]:
                out[i] = [Rejected(row, "no_words", "clip has no words; lm_loss undefined")]
                continue
            try:
                enc = self.scorer.encode(row.get("title"), row.get("previous"), texts[i], cfg.max_tokens)
            except Exception as exc:  # noqa: BLE001 - per-item isolation
                out[i] = exc
                continue
            if enc.n_scored == 0:
                out[i] = [Rejected({**row, "lm_loss": None}, "lm_loss_undefined",
                                   "no assistant token left after the reference's label slice")]
                continue
            todo.append(i)
            encoded.append(enc)
        t0 = time.perf_counter()
        groups = [rows[i].get("video_id") for i in todo] if cfg.share_prefix else None
        losses = self.scorer.losses(encoded, mode=cfg.mode, max_batch_tokens=cfg.max_batch_tokens,
                                    max_batch_rows=cfg.max_batch_rows, groups=groups)
        if encoded:
            n_tok = sum(len(e.input_ids) for e in encoded)
            dt = time.perf_counter() - t0
            log.info("lm_loss: %d clips, %d tokens in %.1f s (%.0f tokens/s)", len(encoded), n_tok, dt,
                     n_tok / max(dt, 1e-9))
        lo, hi = cfg.min_loss, cfg.max_loss
        for i, enc, loss in zip(todo, encoded, losses):
            row = {**rows[i], "lm_loss": loss}
            if not math.isfinite(loss):
                out[i] = [Rejected(row, "lm_loss_undefined", f"lm_loss={loss} over {enc.n_scored} token(s)")]
            elif loss < lo:
                out[i] = [Rejected(row, "lm_loss_out_of_range", f"lm_loss={loss:.2f} < {lo:g}")]
            elif loss > hi:
                out[i] = [Rejected(row, "lm_loss_out_of_range", f"lm_loss={loss:.2f} > {hi:g}")]
            else:
                out[i] = [row]
        return out  # type: ignore[return-value]


class PretrainLmLossFilter(LmLossFilter):
    """Chat-LM loss of each clip's words; keeps 1.5 <= lm_loss <= 6.5 (pre-training; configurable).

    :class:`LmLossFilter` with the reference's pre-training ``max_loss`` (same stage name)."""

    Config = PretrainLmLossConfig


# -- the model ----------------------------------------------------------------------------

class LossScorer:
    """A causal LM and its tokenizer, scoring clips as the reference does. Build it with
    :meth:`load` (from disk) or directly from loaded objects (tests, benches)."""

    def __init__(self, model, tokenizer, *, source: str = "", attn_implementation: str = "sdpa"):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.source = source
        self.attn_implementation = attn_implementation
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.backbone = model.base_model          # the transformer without its LM head
        self.lm_head = model.get_output_embeddings()
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer of {source or 'the model'} has no chat template")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        limit = getattr(model.config, "max_position_embeddings", None)
        self.max_positions = int(limit) if limit else None
        self._torch = torch

    @classmethod
    def load(cls, model: str, *, model_dir: str | None = None, device: str = "auto",
             attn_implementation: str = "auto", stage: str = "lm_loss") -> "LossScorer":
        """Load tokenizer and model from a folder or ``.gguf`` file found without download.

        Raises:
            MissingWeightsError: not found (the message has the download command).
            ImportError: transformers (or, for a .gguf file, gguf) missing.
        """
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError("the lm_loss stage needs transformers: pip install -e '.[train]'") from exc
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        attn = pick_attn_implementation(attn_implementation, device)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if model.endswith(".gguf"):
            if not os.path.isfile(model):
                raise MissingWeightsError(f"GGUF file {model} not found")
            try:
                import gguf  # noqa: F401 - transformers needs it to read the file
            except ImportError as exc:
                raise ImportError("loading a .gguf model needs the gguf package (pip install gguf)") from exc
            path, kwargs["gguf_file"] = os.path.split(os.path.abspath(model))
        else:
            path = resolve_model_path(model, model_dir, stage=stage)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, **kwargs)
        return cls(lm.to(device), tokenizer, source=model if model.endswith(".gguf") else path,
                   attn_implementation=attn)

    # -- encoding ------------------------------------------------------------------------
    def encode(self, title: str | None, previous: str | None, text: str, max_tokens: int = 32768) -> Encoded:
        """The chat of one clip as token ids with its scored span (module docstring, 1 and 4).

        Raises:
            ValueError: the chat template does not render the assistant header as a prefix
                of the full chat, or the clip alone does not fit ``max_tokens``.
        """
        limit = min(max_tokens, self.max_positions or max_tokens)
        previous = previous or ""
        cut = 0
        enc = self._encode(title, previous, text)
        if len(enc.input_ids) > limit and previous:
            prev_ids = self.tokenizer(previous, add_special_tokens=False).input_ids
            over = len(enc.input_ids) - limit
            # A cut can shift token boundaries by a few tokens; retry with a wider cut.
            for margin in (0, 8, 64):
                cut = min(len(prev_ids), over + margin)
                kept = self.tokenizer.decode(prev_ids[cut:]).strip() if cut < len(prev_ids) else ""
                enc = self._encode(title, kept, text)
                if len(enc.input_ids) <= limit:
                    break
        if len(enc.input_ids) > limit:
            raise ValueError(f"clip chat is {len(enc.input_ids)} tokens without the previous transcription, "
                             f"over the limit of {limit} (max_tokens / the model's positions)")
        enc.previous_cut_tokens = cut
        return enc

    def _encode(self, title: str | None, previous: str, text: str) -> Encoded:
        messages = chat_messages(title, previous, text)
        tok = self.tokenizer
        prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not render the assistant header as a prefix of the chat")
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        ids = tok(full, add_special_tokens=False).input_ids
        if ids[:len(prompt_ids)] != prompt_ids:
            raise ValueError("tokenisation merges the assistant header with the clip text")
        return Encoded(list(ids), len(prompt_ids), len(ids) - TRAILING_UNSCORED)

    # -- scoring -------------------------------------------------------------------------
    def losses(self, encoded: Sequence[Encoded], *, mode: Mode = "compat", max_batch_tokens: int = 16384,
               max_batch_rows: int = 64, groups: Sequence[str | None] | None = None,
               min_shared_tokens: int = 256) -> list[float]:
        """``lm_loss`` of each encoded clip (nats per scored token), in input order.

        Clips of one ``groups`` value (a video) whose chats share at least ``min_shared_tokens``
        leading tokens (the system turn, the title and the common start of their previous
        transcriptions) are scored on one cached prefix (:func:`prefix_chains`); the rest in
        length-sorted batches (:func:`length_batches`). Both give the loss of the clip alone."""
        out = [math.nan] * len(encoded)
        plain = list(range(len(encoded)))
        if groups is not None:
            chains, plain = prefix_chains([e.input_ids for e in encoded], [e.label_start for e in encoded],
                                          groups, min_shared_tokens)
            for chain in chains:
                for i, loss in zip(chain.members, self._chain_losses(encoded, chain, mode)):
                    out[i] = loss
        lengths = [len(encoded[i].input_ids) for i in plain]
        for batch in length_batches(lengths, max_batch_tokens, max_batch_rows):
            idx = [plain[k] for k in batch]
            for i, loss in zip(idx, self._batch_losses([encoded[i] for i in idx], mode)):
                out[i] = loss
        return out

    def _chain_losses(self, encoded: Sequence[Encoded], chain: "PrefixChain", mode: Mode) -> list[float]:
        """Run the chain's longest shared prefix once with a KV cache, then each member's
        remaining tokens on that cache cropped to the member's shared length (members come
        longest-shared first, so each crop only shortens it)."""
        torch = self._torch
        first = encoded[chain.members[0]].input_ids
        out = []
        with torch.inference_mode():
            prefix = torch.tensor([first[:chain.shared[0]]], device=self.device)
            cache = self.backbone(input_ids=prefix, use_cache=True).past_key_values
            for i, shared in zip(chain.members, chain.shared):
                e = encoded[i]
                cache.crop(shared)
                rest = torch.tensor([e.input_ids[shared:]], device=self.device)
                hidden = self.backbone(input_ids=rest, past_key_values=cache, use_cache=True)[0][0]
                # position p is predicted from the hidden state at p - 1 (index p - 1 - shared here)
                cols = torch.arange(e.label_start, e.label_end)
                targets = torch.tensor(e.input_ids[e.label_start:e.label_end])
                logits = self.lm_head(hidden[(cols - 1 - shared).to(self.device)]).float()
                ce = torch.nn.functional.cross_entropy(logits, targets.to(self.device), reduction="none").cpu()
                out += mean_token_losses(ce, targets, torch.zeros(len(targets), dtype=torch.long), 1, mode)
        return out

    def _batch_losses(self, batch: list[Encoded], mode: Mode) -> list[float]:
        torch = self._torch
        n, width = len(batch), max(len(e.input_ids) for e in batch)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        rows, cols = [], []
        for b, e in enumerate(batch):
            ids[b, :len(e.input_ids)] = torch.tensor(e.input_ids)
            rows += [b] * e.n_scored
            cols += range(e.label_start, e.label_end)
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        targets = ids[rows_t, cols_t]
        with torch.inference_mode():
            # Right padding under causal attention: a real token only sees earlier positions, all
            # real, so no padding mask is needed (pads only produce outputs nobody reads) and the
            # attention kernels take their fast causal path instead of a materialised 4-D mask.
            hidden = self.backbone(input_ids=ids.to(self.device))[0]
            # position p is predicted from the hidden state at p - 1
            picked = hidden[rows_t.to(self.device), (cols_t - 1).to(self.device)]
            ce = torch.empty(len(rows), dtype=torch.float32)
            step = max(1, (1 << 22) // max(1, self.lm_head.out_features))  # ~4M logits per chunk
            for s in range(0, len(rows), step):
                logits = self.lm_head(picked[s:s + step]).float()
                ce[s:s + step] = torch.nn.functional.cross_entropy(
                    logits, targets[s:s + step].to(self.device), reduction="none").cpu()
        return mean_token_losses(ce, targets, rows_t, n, mode)


# -- pure functions ---------------------------------------------------------------------------

def clip_text(words: list[dict[str, Any]] | None) -> str:
    """The assistant message: each word's text stripped, joined by single spaces (reference:
    ``' '.join(t.strip() for s, e, t in subtitles)``); "" when there are no words."""
    return " ".join((w.get("text") or "").strip() for w in (words or [])).strip()


def chat_messages(title: str | None, previous: str | None, text: str) -> list[dict[str, str]]:
    """The reference's three-turn chat for one clip (module docstring); ``title`` None is ""."""
    title = "" if title is None else title
    user = (USER_PROMPT_WITH_PREVIOUS.format(title=title, previous=previous) if previous
            else USER_PROMPT.format(title=title))
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user},
            {"role": "assistant", "content": text}]


def length_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_rows: int) -> list[list[int]]:
    """Indices grouped into batches of similar length: sorted by length, a batch grows while
    ``rows x longest <= max_batch_tokens`` (padded tokens) and ``rows <= max_batch_rows``. A
    sequence longer than ``max_batch_tokens`` is a batch of its own."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and ((len(cur) + 1) * lengths[i] > max_batch_tokens or len(cur) >= max_batch_rows):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class PrefixChain:
    """Clips scored on one cached prefix: ``members`` (indices) in decreasing ``shared`` order;
    ``shared[k]``: how many leading tokens member *k* shares with the first member."""
    members: list[int]
    shared: list[int]


def prefix_chains(sequences: Sequence[Sequence[int]], label_starts: Sequence[int], groups: Sequence[str | None],
                  min_shared: int = 256) -> tuple[list[PrefixChain], list[int]]:
    """Split clips into chains that share a token prefix and the rest.

    Within a group (a video), every clip is compared with the group's longest sequence: the
    clips of one video share the system turn, the title and the start of their previous
    transcriptions, so the longest one's prefix holds every other clip's shared part. A clip's
    shared length is that common prefix, cut so that the token before its first scored token
    is recomputed (its hidden state predicts that token). Clips sharing fewer than
    ``min_shared`` tokens, and groups where fewer than two would share, are left to batching.

    Returns:
        (chains, plain indices)
    """
    by_group: dict[str, list[int]] = {}
    plain: list[int] = []
    for i, g in enumerate(groups):
        (plain.append(i) if g is None else by_group.setdefault(g, []).append(i))
    chains: list[PrefixChain] = []
    for idx in by_group.values():
        master = max(idx, key=lambda i: len(sequences[i]))
        ref = sequences[master]
        shared = {}
        for i in idx:
            seq, n = sequences[i], 0
            limit = min(len(seq), len(ref), label_starts[i] - 1)
            while n < limit and seq[n] == ref[n]:
                n += 1
            shared[i] = n
        members = sorted((i for i in idx if shared[i] >= min_shared), key=lambda i: -shared[i])
        if len(members) < 2:
            plain += idx
            continue
        chains.append(PrefixChain(members, [shared[i] for i in members]))
        plain += [i for i in idx if shared[i] < min_shared]
    return chains, sorted(plain)


def mean_token_losses(ce, targets, rows, n_rows: int, mode: Mode = "compat") -> list[float]:
    """Per-row mean of token cross-entropies ``ce`` (1-D float tensor) whose target ids are
    ``targets`` and rows ``rows``. ``compat``: the reference's ``sum(ce) / count(target > 0)``
    (token id 0 is summed but not counted; a row whose every target is 0 gives inf);
    ``precise``: ``sum(ce) / count``."""
    import torch

    sums = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows, ce.double())
    counted = (targets > 0) if mode == "compat" else torch.ones_like(targets, dtype=torch.bool)
    counts = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows, counted.double())
    return [float(s / c) if c > 0 else (math.inf if s > 0 else math.nan) for s, c in zip(sums, counts)]


def pick_attn_implementation(requested: str, device: str) -> str:
    """``auto``: FlashAttention-2 on cuda when ``flash_attn`` imports (as the reference), else
    SDPA."""
    if requested != "auto":
        return requested
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401 - optional GPU extra
            return "flash_attention_2"
        except ImportError:
            log.warning("lm_loss: flash-attn is not installed; using SDPA attention on cuda")
    return "sdpa"


def is_causal_lm_checkpoint(path: str) -> bool:
    """A transformers checkpoint folder: ``config.json``, weights and a tokenizer."""
    def has(*names):
        return any(os.path.isfile(os.path.join(path, n)) for n in names)
    weights = has("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                  "pytorch_model.bin.index.json")
    return has("config.json") and weights and has("tokenizer.json", "tokenizer_config.json")


def resolve_model_path(model: str, model_dir: str | None = None, *, stage: str = "lm_loss") -> str:
    """The checkpoint folder of ``model`` (:func:`stages.models.resolve_checkpoint`).

    Raises:
        MissingWeightsError: not found; the message has the ``huggingface-cli download`` command.
    """
    repo = model if "/" in model and not os.path.isabs(model) and not model.startswith(".") else None
    return resolve_checkpoint(model, stage=stage, repo_id=repo, model_dir=model_dir,
                              is_checkpoint=is_causal_lm_checkpoint, what="LM weights")
