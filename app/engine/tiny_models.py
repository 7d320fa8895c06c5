"""Random-weight FunASR models built with FunASR's own classes.

Two uses, both explicit:
- the test suite and the ``demo`` mode build *tiny* models (a few hundred KB, seconds to build)
  so that the whole stack runs offline with no weights and no GPU;
- the benchmarks build a *large-sized* ASR model with the exact architecture of
  Paraformer-large (220M parameters) because inference speed does not depend on weight values.

Every model is written in the layout ``AutoModel`` reads from a local directory
(``config.yaml``, ``model.pt``, ``tokens.json``, Kaldi ``am.mvn``, ``configuration.json``)
and is loaded through ``AutoModel`` exactly like a real one. The text they produce is
deterministic nonsense, and every directory carries a ``DEMO_MODEL_RANDOM_WEIGHTS`` marker
file so that nobody mistakes one for a real model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

# Marker file: the engine refuses a directory that carries it unless demo mode was chosen.
RANDOM_WEIGHTS_MARKER = "DEMO_MODEL_RANDOM_WEIGHTS"

# Common characters for the demo vocabulary, so the nonsense at least looks like Chinese.
_DEMO_CHARS = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
    "对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面"
)

# Punctuation classes of FunASR's ct-punc model, in its order.
PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]


@dataclass(frozen=True)
class AsrDims:
    """Architecture sizes of a BiCifParaformer (the model behind Paraformer-large with timestamps)."""

    d_model: int
    heads: int
    ffn: int
    encoder_blocks: int
    decoder_blocks: int
    vocab: int


TINY_ASR = AsrDims(d_model=32, heads=2, ffn=64, encoder_blocks=2, decoder_blocks=2, vocab=len(_DEMO_CHARS) + 4)
# The published Paraformer-large: 50 SAN-M encoder blocks and 16 decoder blocks of width 512, vocabulary 8404.
LARGE_ASR = AsrDims(d_model=512, heads=4, ffn=2048, encoder_blocks=50, decoder_blocks=16, vocab=8404)


@dataclass(frozen=True)
class DemoModelDirs:
    """Where :func:`build_demo_models` wrote each model."""

    asr: Path
    vad: Path
    punc: Path
    online: Path


def _token_list(vocab: int) -> list[str]:
    chars = list(_DEMO_CHARS)
    used = set(chars)
    code_point = 0x4E00
    while len(chars) < vocab - 4:
        # Large vocabularies: fill with further CJK characters, each once (FunASR refuses duplicates).
        if chr(code_point) not in used:
            chars.append(chr(code_point))
        code_point += 1
    return ["<blank>", "<s>", "</s>", *chars[: vocab - 4], "<unk>"]


def _write_am_mvn(path: Path, dim: int) -> None:
    """Kaldi nnet1 text format that FunASR's WavFrontend parses: a shift (<AddShift>) and a scale (<Rescale>)."""
    shift = " ".join(["-8.0"] * dim)
    scale = " ".join(["0.25"] * dim)
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n"
        "</Nnet>\n",
        encoding="utf-8",
    )


def _save(model_dir: Path, config: dict, model, tokens: list[str] | None, mvn_dim: int, task: str) -> None:
    import torch

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if tokens is not None:
        (model_dir / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False), encoding="utf-8")
    if mvn_dim:
        _write_am_mvn(model_dir / "am.mvn", mvn_dim)
    torch.save(model.state_dict(), model_dir / "model.pt")
    files = {"init_param": "model.pt", "config": "config.yaml"}
    if tokens is not None:
        files["tokenizer_conf"] = {"token_list": "tokens.json"}
    if mvn_dim:
        files["frontend_conf"] = {"cmvn_file": "am.mvn"}
    (model_dir / "configuration.json").write_text(
        json.dumps({"framework": "pytorch", "task": task, "model": {"type": "funasr"}, "file_path_metas": files}, indent=2),
        encoding="utf-8",
    )
    (model_dir / RANDOM_WEIGHTS_MARKER).write_text(
        "This model has RANDOM weights. It was built by paraformer-asr for tests, demos and benchmarks.\nIts transcripts are deterministic nonsense.\n",
        encoding="utf-8",
    )


def _instantiate(config: dict, tokens: list[str] | None, input_size: int | None):
    from funasr.register import tables

    conf = dict(config.get("model_conf", {}))
    for key in ("encoder", "encoder_conf", "decoder", "decoder_conf", "predictor", "predictor_conf", "ctc_conf"):
        if key in config:
            conf[key] = config[key]
    if tokens is not None:
        conf["vocab_size"] = len(tokens)
    if input_size is not None:
        conf["input_size"] = input_size
    return tables.model_classes[config["model"]](**conf)


def asr_config(dims: AsrDims) -> dict:
    return {
        "model": "BiCifParaformer",
        "model_conf": {
            "ctc_weight": 0.0,
            "lsm_weight": 0.1,
            "length_normalized_loss": True,
            "predictor_weight": 1.0,
            "predictor_bias": 1,
            "sampling_ratio": 0.75,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": dims.d_model,
            "attention_heads": dims.heads,
            "linear_units": dims.ffn,
            "num_blocks": dims.encoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
        },
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": dims.heads,
            "linear_units": dims.ffn,
            "num_blocks": dims.decoder_blocks,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "self_attention_dropout_rate": 0.1,
            "src_attention_dropout_rate": 0.1,
            "att_layer_num": dims.decoder_blocks,
            "kernel_size": 11,
            "sanm_shfit": 0,
        },
        "predictor": "CifPredictorV3",
        "predictor_conf": {
            "idim": dims.d_model,
            "threshold": 1.0,
            "l_order": 1,
            "r_order": 1,
            "tail_threshold": 0.45,
            "smooth_factor2": 0.25,
            "noise_threshold2": 0.01,
            "upsample_times": 3,
            "use_cif1_cnn": False,
            "upsample_type": "cnn_blstm",
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            # No dither: identical audio must give identical features, hence identical text.
            "dither": 0.0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "normalize": None,
    }


def _make_decisive(model, tokens: list[str]) -> None:
    import torch

    with torch.no_grad():
        # Random CIF weights fire almost never or on every frame. Make the predictor fire about
        # every third frame (~5 tokens/s) so demo transcripts have a plausible length.
        for name in ("cif_output", "cif_output2"):
            layer = getattr(model.predictor, name, None)
            if layer is not None:
                layer.weight.mul_(0.05)
                layer.bias.fill_(-1.0)
        # Keep <blank>, <s>, </s> and <unk> out of the argmax so that text is never empty.
        out = model.decoder.output_layer
        for idx in (0, 1, 2, len(tokens) - 1):
            out.bias[idx] = -1e4


def build_asr_model(model_dir: Path, dims: AsrDims = TINY_ASR, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    config = asr_config(dims)
    tokens = _token_list(dims.vocab)
    model = _instantiate(config, tokens, input_size=80 * 7)
    _make_decisive(model, tokens)
    _save(model_dir, config, model, tokens, mvn_dim=80 * 7, task="auto-speech-recognition")
    return model_dir


def online_asr_config(dims: AsrDims) -> dict:
    """ParaformerStreaming, as FunASR's paraformer-zh-streaming is built (chunked SAN-M encoder)."""
    config = asr_config(dims)
    config["model"] = "ParaformerStreaming"
    config["encoder"] = "SANMEncoderChunkOpt"
    config["encoder_conf"].update(
        input_layer="pe_online",
        chunk_size=[12, 15],
        stride=[8, 10],
        pad_left=[0, 0],
        encoder_att_look_back_factor=[4, 4],
        decoder_att_look_back_factor=[1, 1],
    )
    config["decoder_conf"]["sanm_shfit"] = 5
    config["predictor"] = "CifPredictorV2"
    config["predictor_conf"] = {"idim": dims.d_model, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45}
    config["frontend"] = "WavFrontendOnline"
    return config


def build_online_asr_model(model_dir: Path, dims: AsrDims = TINY_ASR, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed + 1)
    config = online_asr_config(dims)
    tokens = _token_list(dims.vocab)
    model = _instantiate(config, tokens, input_size=80 * 7)
    _make_decisive(model, tokens)
    _save(model_dir, config, model, tokens, mvn_dim=80 * 7, task="auto-speech-recognition")
    return model_dir


def vad_config() -> dict:
    return {
        "model": "FsmnVADStreaming",
        "model_conf": {
            "sample_rate": 16000,
            "detect_mode": 1,
            "snr_mode": 0,
            "max_end_silence_time": 800,
            "max_start_silence_time": 3000,
            "do_start_point_detection": True,
            "do_end_point_detection": True,
            "window_size_ms": 200,
            "sil_to_speech_time_thres": 150,
            "speech_to_sil_time_thres": 150,
            "speech_2_noise_ratio": 1.0,
            "do_extend": 1,
            "lookback_time_start_point": 200,
            "lookahead_time_end_point": 100,
            "max_single_segment_time": 60000,
            "snr_thres": -100.0,
            "noise_frame_num_used_for_snr": 100,
            # The demo network always says "speech"; this frame-energy floor (dB of the summed
            # squares of a 25 ms frame of [-1, 1] samples, about -62 dBFS RMS) is what makes
            # silence silent, so the real state machine segments by energy.
            "decibel_thres": -25.0,
            "speech_noise_thres": 0.6,
            "fe_prior_thres": 0.0001,
            "silence_pdf_num": 1,
            "sil_pdf_ids": [0],
            "speech_noise_thresh_low": -0.1,
            "speech_noise_thresh_high": 0.3,
            "output_frame_probs": False,
            "frame_in_ms": 10,
            "frame_length_ms": 25,
        },
        "encoder": "FSMN",
        "encoder_conf": {
            "input_dim": 400,
            "input_affine_dim": 16,
            "fsmn_layers": 2,
            "linear_dim": 32,
            "proj_dim": 16,
            "lorder": 4,
            "rorder": 0,
            "lstride": 1,
            "rstride": 0,
            "output_affine_dim": 16,
            "output_dim": 4,
        },
        "frontend": "WavFrontendOnline",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "dither": 0.0,
            "lfr_m": 5,
            "lfr_n": 1,
        },
    }


def build_vad_model(model_dir: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    config = vad_config()
    model = _instantiate(config, None, None)
    with torch.no_grad():
        # Random VAD weights never detect speech: make the network's silence class (pdf 0)
        # improbable regardless of input, leaving the decision to the energy threshold.
        final = model.encoder.out_linear2.linear
        final.weight.zero_()
        final.bias.fill_(0.0)
        final.bias[0] = -10.0
    _save(model_dir, config, model, None, mvn_dim=400, task="voice-activity-detection")
    return model_dir


def punc_config(vocab: int) -> dict:
    return {
        "model": "CTTransformer",
        "model_conf": {
            "ignore_id": 0,
            "embed_unit": 32,
            "att_unit": 32,
            "dropout_rate": 0.1,
            "punc_list": PUNC_LIST,
            "punc_weight": [1.0] * len(PUNC_LIST),
            "sentence_end_id": 3,
        },
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": 32,
            "output_size": 32,
            "attention_heads": 2,
            "linear_units": 64,
            "num_blocks": 2,
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "padding_idx": 0,
        },
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
    }


def build_punc_model(model_dir: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    tokens = ["<blank>", "<s>", "</s>", *_DEMO_CHARS, "<unk>"]
    config = punc_config(len(tokens))
    model = _instantiate(config, tokens, None)
    with torch.no_grad():
        # A random punctuation model pastes "<unk>" into the text: bias that class away,
        # and favour "no punctuation" so that commas stay occasional.
        model.decoder.bias[0] = -1e4
        model.decoder.bias[1] += 2.0
    _save(model_dir, config, model, tokens, mvn_dim=0, task="punctuation")
    return model_dir


def build_demo_models(root: Path, seed: int = 0, asr_dims: AsrDims = TINY_ASR) -> DemoModelDirs:
    """Build (or reuse, when already built with the same settings) the ASR, VAD and punctuation models."""
    root = Path(root)
    stamp = root / "BUILD_SETTINGS.json"
    wanted = {"seed": seed, "asr_dims": asr_dims.__dict__, "format": 4}
    dirs = DemoModelDirs(asr=root / "asr", vad=root / "vad", punc=root / "punc", online=root / "online")
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and all((d / "model.pt").exists() for d in dirs.__dict__.values()):
        return dirs
    log.warning("building RANDOM-WEIGHT demo models in %s (nonsense transcripts)", root)
    build_asr_model(dirs.asr, asr_dims, seed)
    build_vad_model(dirs.vad, seed)
    build_punc_model(dirs.punc, seed)
    build_online_asr_model(dirs.online, asr_dims, seed)
    stamp.write_text(json.dumps(wanted))
    return dirs
