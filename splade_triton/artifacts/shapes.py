"""Shapes the encoder must accept, read from a pipeline's configs (one source of truth).

A TensorRT engine accepts only the input shapes of its optimization profile,
so the profile is derived here from the same config.pbtxt settings that decide
which shapes reach the encoder: the tokenizer's ``max_length`` (or its longest
``query_max_length`` / ``document_max_length``, BGE-M3) and
``pad_to_multiple_of`` (its length buckets) and the models' ``max_batch_size``.
Changing a setting changes the profile of the next engine build; nothing is
written twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

__all__ = [
    "ENCODER_INPUTS",
    "Profile",
    "Shapes",
    "engine_profile",
    "parse_config",
    "read_config",
    "tokenizer_max_length",
]

ENCODER_INPUTS = ("input_ids", "attention_mask")

# Texts of 97-128 tokens: typical passages of an indexing workload (MS MARCO
# passages average ~60 words, ~80-100 WordPiece tokens). See engine_profile.
DEFAULT_OPT_SEQ = 128


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """A config.pbtxt's text as Triton's ModelConfig message."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse one config.pbtxt."""
    try:
        return parse_config(Path(path).read_text())
    except text_format.ParseError as e:
        raise ValueError(f"{path}: {e}") from None


def _parameter(config: model_config_pb2.ModelConfig, key: str, default: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def _positive_int(config: model_config_pb2.ModelConfig, key: str, default: str) -> int:
    text = _parameter(config, key, default)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"model '{config.name}' parameter {key}={text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"model '{config.name}' parameter {key}={value} must be >= 1")
    return value


# A tokenizer with a length per input_type (BGE-M3) sets these; the longest is
# what reaches the encoder. Each defaults to max_length (templates/common/tokenizer).
TYPED_LENGTHS = ("query_max_length", "document_max_length")


def tokenizer_max_length(tokenizer: model_config_pb2.ModelConfig) -> int:
    """The longest text the tokenizer emits, in tokens: ``max_length`` (default
    512), or the longest of ``query_max_length`` / ``document_max_length``."""
    default = _positive_int(tokenizer, "max_length", "512")
    return max(_positive_int(tokenizer, name, str(default)) for name in TYPED_LENGTHS)


@dataclass(frozen=True)
class Shapes:
    """What reaches the encoder, from the tokenizer, encoder and ensemble configs."""

    encoder_max_batch_size: int  # texts per encoder execution
    request_max_batch_size: int  # texts per client request (the ensemble's max_batch_size)
    max_length: int  # tokens per text after truncation, special tokens included
    pad_to_multiple_of: int

    @classmethod
    def from_configs(cls, configs: dict[str, model_config_pb2.ModelConfig]) -> "Shapes":
        """Read the settings from a pipeline's configs keyed by step
        (``repository.pipeline_configs``): tokenizer, encoder, ensemble."""
        tokenizer, encoder = configs["tokenizer"], configs["encoder"]
        return cls(
            encoder_max_batch_size=encoder.max_batch_size,
            request_max_batch_size=configs["ensemble"].max_batch_size,
            max_length=tokenizer_max_length(tokenizer),
            pad_to_multiple_of=_positive_int(tokenizer, "pad_to_multiple_of", "1"),
        )

    @classmethod
    def from_repository(cls, repository: Path, name: str = "splade") -> "Shapes":
        """Read the settings of pipeline ``name`` from an assembled model repository on disk
        (its models ``<name>_tokenizer``, ``<name>_encoder`` and the ensemble ``<name>``)."""
        repository = Path(repository)
        served = {"tokenizer": f"{name}_tokenizer", "encoder": f"{name}_encoder", "ensemble": name}
        return cls.from_configs({step: read_config(repository / model / "config.pbtxt") for step, model in served.items()})

    def padded_length(self, tokens: int) -> int:
        """The length the tokenizer pads a text of ``tokens`` tokens to (at least)."""
        return -(-tokens // self.pad_to_multiple_of) * self.pad_to_multiple_of

    def buckets(self) -> list[int]:
        """Every padded sequence length the tokenizer can emit."""
        return sorted({self.padded_length(n) for n in range(1, self.max_length + 1)})


@dataclass(frozen=True)
class Profile:
    """One TensorRT optimization profile, the same for both encoder inputs.

    Each shape is (batch, sequence length).
    """

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def covers(self, batch: int, seq: int) -> bool:
        """Whether an input of this shape can run on the engine."""
        return self.min[0] <= batch <= self.max[0] and self.min[1] <= seq <= self.max[1]

    def as_dict(self) -> dict:
        """JSON-friendly form, as recorded in the engine's provenance."""
        return {"inputs": list(ENCODER_INPUTS), "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        """Inverse of ``as_dict``."""
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def engine_profile(shapes: Shapes, opt_batch: int | None = None, opt_seq: int | None = None) -> Profile:
    """The engine's optimization profile for ``shapes``.

    min (1, 1): any request, down to one text of one token, must run.
    max (encoder max_batch_size, max_length): the largest execution Triton can
    form, at the longest padded length; TensorRT sizes its activation memory
    for this corner.
    opt: TensorRT times its kernels at this shape and picks the fastest there.
    Default: a full batch (under load the dynamic batcher fills executions to
    max_batch_size, and throughput is decided there) of 128-token texts, the
    bucket typical passages fall in: an indexing workload spends most of the
    GPU's time on such batches, while short queries are cheap at any choice.
    Both can be set (``--opt-batch`` / ``--opt-seq`` of ``python -m export.build_engine``).

    Raises ValueError when the settings cannot make a correct fixed-shape
    encoder: padding beyond ``max_length`` would give positions the model has
    no embedding for, and a request larger than the encoder's batch could
    never run.
    """
    top = shapes.padded_length(shapes.max_length)
    if top != shapes.max_length:
        raise ValueError(
            f"tokenizer pad_to_multiple_of={shapes.pad_to_multiple_of} does not divide max_length={shapes.max_length}: "
            f"texts of {shapes.max_length} tokens would be padded to {top}, beyond the model's positions; "
            f"choose a divisor of {shapes.max_length}"
        )
    if shapes.encoder_max_batch_size < 1:
        raise ValueError("the encoder needs max_batch_size >= 1 for a batched engine")
    if shapes.encoder_max_batch_size < shapes.request_max_batch_size:
        raise ValueError(
            f"encoder max_batch_size {shapes.encoder_max_batch_size} is below the ensemble's "
            f"{shapes.request_max_batch_size} texts per request: a full request could never run"
        )
    max_shape = (shapes.encoder_max_batch_size, shapes.max_length)
    opt_batch = shapes.encoder_max_batch_size if opt_batch is None else opt_batch
    opt_seq = min(shapes.padded_length(DEFAULT_OPT_SEQ), shapes.max_length) if opt_seq is None else opt_seq
    if not (1 <= opt_batch <= max_shape[0] and 1 <= opt_seq <= max_shape[1]):
        raise ValueError(f"opt shape ({opt_batch}, {opt_seq}) lies outside (1, 1)..{max_shape}")
    return Profile(min=(1, 1), opt=(opt_batch, opt_seq), max=max_shape)
