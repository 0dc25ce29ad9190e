"""Media objects (image, video, audio, document, sticker), by uploaded ``id`` or hosted ``link``.

``mime_type`` and ``size_bytes`` are waq-only hints, never sent to Meta: when a caller knows
them, waq refuses a file Meta would fail later (often asynchronously, as 131053).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from producer import limits
from producer._model import ContractModel

__all__ = ["Audio", "Document", "Image", "Media", "Sticker", "Video"]


class Media(ContractModel):
    """Exactly one of ``id`` (uploaded media, Meta's recommendation) or ``link`` (HTTP(S) URL)."""

    kind: ClassVar[str] = "media"
    mime_types: ClassVar[frozenset[str]] = frozenset()
    max_bytes: ClassVar[int] = 0
    check_link_extension: ClassVar[bool] = True

    id: str | None = Field(default=None, min_length=1)
    link: str | None = Field(default=None, min_length=1)
    mime_type: str | None = Field(default=None, exclude=True, description="waq-only hint")
    size_bytes: int | None = Field(default=None, ge=0, exclude=True, description="waq-only hint")

    @field_validator("link")
    @classmethod
    def _link_is_http_url_of_a_supported_type(cls, link: str | None) -> str | None:
        if link is None:
            return None
        parts = urlsplit(link)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError("url_scheme", "link must be an http(s) URL")
        extension = parts.path.rsplit("/", 1)[-1].rpartition(".")[2].lower()
        guessed = limits.EXTENSION_MIME_TYPES.get(extension)
        if cls.check_link_extension and guessed and guessed not in cls.mime_types:
            raise PydanticCustomError(
                "media_type",
                "link ends in .{extension} ({guessed}); {kind} accepts {allowed}",
                {
                    "extension": extension,
                    "guessed": guessed,
                    "kind": cls.kind,
                    "allowed": ", ".join(sorted(cls.mime_types)),
                },
            )
        return link

    @field_validator("mime_type")
    @classmethod
    def _mime_type_is_supported(cls, mime_type: str | None) -> str | None:
        if mime_type is not None:
            base = mime_type.split(";", 1)[0].strip().lower()
            if base not in cls.mime_types:
                raise PydanticCustomError(
                    "media_type",
                    "{kind} does not accept {mime_type}; it accepts {allowed}",
                    {
                        "kind": cls.kind,
                        "mime_type": mime_type,
                        "allowed": ", ".join(sorted(cls.mime_types)),
                    },
                )
        return mime_type

    @field_validator("size_bytes")
    @classmethod
    def _size_within_limit(cls, size_bytes: int | None) -> int | None:
        if size_bytes is not None and size_bytes > cls.max_bytes:
            raise _too_large(cls.kind, size_bytes, cls.max_bytes)
        return size_bytes

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_source(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("id") is None) == (data.get("link") is None):
            raise PydanticCustomError(
                "media_source", "give exactly one of id (uploaded media) or link (a URL)"
            )
        return data


def _too_large(kind: str, size_bytes: int, max_bytes: int) -> PydanticCustomError:
    return PydanticCustomError(
        "media_too_large",
        "{kind} is {size_bytes} bytes; Meta accepts at most {max_bytes}",
        {"kind": kind, "size_bytes": size_bytes, "max_bytes": max_bytes},
    )


class _Captioned(Media):
    caption: str | None = Field(default=None, max_length=limits.CAPTION_MAX_CHARS)


class Image(_Captioned):
    """JPEG or PNG, at most 5 MB."""

    kind = "image"
    mime_types = limits.IMAGE_MIME_TYPES
    max_bytes = limits.IMAGE_MAX_BYTES


class Video(_Captioned):
    """MP4 or 3GPP (H.264 + AAC), at most 16 MB."""

    kind = "video"
    mime_types = limits.VIDEO_MIME_TYPES
    max_bytes = limits.VIDEO_MAX_BYTES


class Audio(Media):
    """AAC, AMR, MP3, M4A or OGG/OPUS, at most 16 MB; no caption. ``voice`` needs OGG/OPUS."""

    kind = "audio"
    mime_types = limits.AUDIO_MIME_TYPES
    max_bytes = limits.AUDIO_MAX_BYTES

    voice: bool | None = None

    @model_validator(mode="after")
    def _voice_notes_are_ogg(self) -> Audio:
        if self.voice and self.mime_type is not None:
            base = self.mime_type.split(";", 1)[0].strip().lower()
            if base not in limits.VOICE_MIME_TYPES:
                raise PydanticCustomError(
                    "voice_media_type", "a voice note (voice=true) must be audio/ogg with OPUS"
                )
        return self


class Document(_Captioned):
    """A file up to 100 MB; ``filename`` (with its extension) picks the icon the user sees."""

    kind = "document"
    mime_types = limits.DOCUMENT_MIME_TYPES
    max_bytes = limits.DOCUMENT_MAX_BYTES
    # Meta's document list is short but real traffic carries more; only an explicit
    # mime_type is checked, never a guess from the link.
    check_link_extension = False

    filename: str | None = Field(default=None, min_length=1, max_length=limits.FILENAME_MAX_CHARS)


class Sticker(Media):
    """WebP only: 100 KB static, 500 KB animated; no caption."""

    kind = "sticker"
    mime_types = limits.STICKER_MIME_TYPES
    max_bytes = limits.STICKER_ANIMATED_MAX_BYTES

    animated: bool | None = Field(default=None, exclude=True, description="waq-only hint")

    @model_validator(mode="after")
    def _static_stickers_are_small(self) -> Sticker:
        limit = limits.STICKER_STATIC_MAX_BYTES
        if not self.animated and self.size_bytes is not None and self.size_bytes > limit:
            raise _too_large("static sticker", self.size_bytes, limit)
        return self
