"""Which model factories a file may name: edgekd's own, and those the user trusts.

A checkpoint records the factory that rebuilds its architecture (`package.module:callable`) and
the keyword arguments. Calling whatever a file names would let a downloaded `.pt` run
`os:system`, so a name read from a checkpoint is only called when it is

- one of edgekd's built-in factories below (their arguments are validated and bounded, so a
  file cannot ask for a billion-channel network; `edgekd.zoo:digits_teacher` is none: it trains
  for minutes, its cache is itself a checkpoint, and the zoo saves its teacher under
  `edgekd.models:resnet`), or
- a factory the user named: on the command line (`--teacher mymodels:net`, `--trust-factory`),
  in the recipe (`teacher:`, `student:`, `trust_factories:`), in `EDGEKD_TRUSTED_FACTORIES`
  (comma-separated), or in the Python API's `trusted_factories=`.

Anything else is refused with exit 2, naming the factory and how to allow it.
"""

from __future__ import annotations

import os
from typing import Annotated, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.errors import BadInput

TRUST_ENV = "EDGEKD_TRUSTED_FACTORIES"

MAX_RESNET_BLOCKS = 16
"""Most residual blocks a built-in ResNet stage may have: the built-ins use 1 or 2; 16 per stage is
already deeper than any edge model here, and an unbounded count lets a file ask for 10**12 layers."""


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _ResNetArgs(_Args):
    # Bounds: the widest built-in in use is 32 channels; 1024 with 3 stages is already a ~300M-parameter net.
    width: int = Field(default=32, ge=1, le=1024)
    blocks: list[Annotated[int, Field(ge=1, le=MAX_RESNET_BLOCKS)]] = Field(
        default_factory=lambda: [1, 1, 1], min_length=3, max_length=3)
    in_channels: int = Field(default=1, ge=1, le=64)
    num_classes: int = Field(default=10, ge=1, le=100_000)


class _MobileNetArgs(_Args):
    width: int = Field(default=16, ge=1, le=512)
    in_channels: int = Field(default=1, ge=1, le=64)
    num_classes: int = Field(default=10, ge=1, le=100_000)


class _ViTArgs(_Args):
    # Bounds: ViT-B is 768 wide, 12 heads, 12 layers, 3072 FFN at 224 px; these allow that and no more.
    dim: int = Field(default=64, ge=1, le=1024)
    heads: int = Field(default=4, ge=1, le=64)
    layers: int = Field(default=4, ge=1, le=32)
    ffn: int = Field(default=256, ge=1, le=4096)
    patch: int = Field(default=4, ge=1, le=64)
    size: int = Field(default=16, ge=1, le=512)
    classes: int = Field(default=10, ge=1, le=100_000)
    channels: int = Field(default=1, ge=1, le=64)


class _SentenceEncoderArgs(_Args):
    path: str
    attn_implementation: Literal["eager", "sdpa"] = "eager"


# The built-in factories and the schema of their keyword arguments: the one place they are listed.
BUILTIN_FACTORIES: dict[str, type[_Args]] = {
    "edgekd.models:resnet": _ResNetArgs,
    "edgekd.models:mobilenet": _MobileNetArgs,
    "edgekd.models:vit": _ViTArgs,
    "edgekd.hf:sentence_encoder": _SentenceEncoderArgs,
}


def user_trusted(named: Iterable[str | None] = ()) -> frozenset[str]:
    """Factories the user trusts: those `named` (refs they gave; paths and student specs are
    ignored) plus `$EDGEKD_TRUSTED_FACTORIES`."""
    from_env = (part.strip() for part in os.environ.get(TRUST_ENV, "").split(","))
    refs = [*(str(ref) for ref in named if ref), *from_env]
    return frozenset(ref for ref in refs if is_factory_ref(ref))


def is_factory_ref(ref: str) -> bool:
    """`package.module:callable` (not a path, not a `prune:R` / `layers:N` student spec)."""
    module, sep, attr = ref.partition(":")
    return bool(sep) and all(part.isidentifier() for part in module.split(".")) and attr.isidentifier()


def checked_kwargs(factory: str, kwargs: object, *, trusted: Iterable[str], source: str) -> dict:
    """The keyword arguments a file gives `factory`, if the factory may be called; else BadInput."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise BadInput(f"{source}: field 'kwargs' must be a mapping of argument names, got {type(kwargs).__name__}")
    schema = BUILTIN_FACTORIES.get(factory)
    if schema is not None:
        try:
            schema.model_validate(kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "kwargs"
            raise BadInput(f"{source}: argument '{where}' of {factory}: {first['msg']}") from None
        return dict(kwargs)
    if factory in set(trusted):
        return dict(kwargs)
    shown = ascii(factory)  # the name is the file's bytes: escape control, NUL and invisible characters
    if not isinstance(factory, str) or not is_factory_ref(factory):
        raise BadInput(f"{source}: names the factory {shown}, which is not a valid factory reference "
                       "(package.module:callable); edgekd will not call it")
    how = (f"--trust-factory {factory} (or the recipe's 'trust_factories', or {TRUST_ENV}={factory})"
           if factory.isascii() else  # a non-ASCII name is shown escaped only, never echoed raw
           f"--trust-factory (or the recipe's 'trust_factories', or {TRUST_ENV})")
    raise BadInput(
        f"{source}: names the factory {shown}, which edgekd will not call: a file may only name edgekd's "
        f"built-in factories or one you trust. If you trust it, name it: {how}")
