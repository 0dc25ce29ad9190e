"""Every message type Meta's send API accepts, shaped exactly like its JSON.

A message is the type-specific part of a Graph API send body: ``{"type": "text", "text":
{...}}``. Keeping Meta's shape means a body validates and serialises without translation,
and an error path (``message.text.body``) is the path Meta's own documentation uses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import emoji
from pydantic import (
    AfterValidator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from producer import limits
from producer._model import ContractModel, by_type
from producer.interactive import Interactive
from producer.media import Audio, Document, Image, Sticker, Video
from producer.template import Template

__all__ = [
    "AudioMessage",
    "Contact",
    "ContactAddress",
    "ContactEmail",
    "ContactName",
    "ContactOrg",
    "ContactPhone",
    "ContactUrl",
    "ContactsMessage",
    "Context",
    "DocumentMessage",
    "ImageMessage",
    "InteractiveMessage",
    "Location",
    "LocationMessage",
    "Message",
    "Reaction",
    "ReactionMessage",
    "StickerMessage",
    "TemplateMessage",
    "Text",
    "TextMessage",
    "VideoMessage",
    "message_adapter",
]


class Context(ContractModel):
    """Quote an earlier message (any type but a reaction can reply)."""

    message_id: str = Field(min_length=1)


class _Message(ContractModel):
    context: Context | None = None

    @property
    def is_template(self) -> bool:
        """Templates are the one kind Meta sends outside the customer's 24-hour window."""
        return False

    def graph_fields(self) -> dict[str, Any]:
        """The ``type``, type object and ``context`` of a Graph API send body."""
        return self.model_dump(mode="json", exclude_none=True)


class Text(ContractModel):
    """Up to 4,096 characters; ``preview_url`` renders the first URL's preview."""

    preview_url: bool | None = None
    body: str = Field(min_length=1, max_length=limits.TEXT_BODY_MAX_CHARS)

    @field_validator("body")
    @classmethod
    def _something_to_read(cls, body: str) -> str:
        # Meta refuses (or the customer sees) an empty bubble; NULs are never text.
        if "\x00" in body:
            raise PydanticCustomError("text_nul", "body must not contain NUL characters")
        if not body.strip():
            raise PydanticCustomError("text_blank", "body must contain something besides spaces")
        return body


class TextMessage(_Message):
    """A text message."""

    type: Literal["text"] = "text"
    text: Text


class ImageMessage(_Message):
    """An image with an optional caption."""

    type: Literal["image"] = "image"
    image: Image


class VideoMessage(_Message):
    """A video with an optional caption."""

    type: Literal["video"] = "video"
    video: Video


class AudioMessage(_Message):
    """An audio file or a voice note."""

    type: Literal["audio"] = "audio"
    audio: Audio


class DocumentMessage(_Message):
    """A document with an optional filename and caption."""

    type: Literal["document"] = "document"
    document: Document


class StickerMessage(_Message):
    """A WebP sticker."""

    type: Literal["sticker"] = "sticker"
    sticker: Sticker


def _coordinate(limit: float) -> AfterValidator:
    def check(value: float | str) -> float | str:
        try:
            number = float(value)
        except ValueError:
            raise PydanticCustomError("coordinate", "must be a number") from None
        if not -limit <= number <= limit:
            raise PydanticCustomError(
                "coordinate_range", "must be between -{limit} and {limit}", {"limit": int(limit)}
            )
        return value

    return AfterValidator(check)


class Location(ContractModel):
    """Coordinates, as numbers or (as in Meta's examples) numeric strings, kept as given."""

    latitude: Annotated[float | str, _coordinate(90)]
    longitude: Annotated[float | str, _coordinate(180)]
    name: str | None = Field(default=None, min_length=1)
    address: str | None = Field(default=None, min_length=1)


class LocationMessage(_Message):
    """A pin on a map."""

    type: Literal["location"] = "location"
    location: Location


class ContactName(ContractModel):
    """``formatted_name`` is required, plus at least one other part in Meta's rules."""

    formatted_name: str = Field(min_length=1)
    first_name: str | None = None
    last_name: str | None = None
    middle_name: str | None = None
    suffix: str | None = None
    prefix: str | None = None


class ContactPhone(ContractModel):
    """A phone number; ``wa_id`` adds the "Message" button."""

    phone: str | None = None
    type: str | None = None
    wa_id: str | None = None


class ContactEmail(ContractModel):
    """An email address."""

    email: str | None = None
    type: str | None = None


class ContactAddress(ContractModel):
    """A postal address."""

    street: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    country_code: str | None = None
    type: str | None = None


class ContactOrg(ContractModel):
    """Where the contact works."""

    company: str | None = None
    department: str | None = None
    title: str | None = None


class ContactUrl(ContractModel):
    """A web address."""

    url: str | None = None
    type: str | None = None


class Contact(ContractModel):
    """A contact card."""

    name: ContactName
    phones: list[ContactPhone] | None = None
    emails: list[ContactEmail] | None = None
    addresses: list[ContactAddress] | None = None
    org: ContactOrg | None = None
    urls: list[ContactUrl] | None = None
    birthday: str | None = Field(default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")


class ContactsMessage(_Message):
    """One to 257 contact cards."""

    type: Literal["contacts"] = "contacts"
    contacts: list[Contact] = Field(min_length=1, max_length=limits.CONTACTS_MAX)


class InteractiveMessage(_Message):
    """Reply buttons, a list, or a call-to-action URL button."""

    type: Literal["interactive"] = "interactive"
    interactive: Interactive


class Reaction(ContractModel):
    """An emoji on an earlier message; an empty ``emoji`` removes the reaction."""

    message_id: str = Field(min_length=1)
    emoji: str

    @field_validator("emoji")
    @classmethod
    def _one_emoji_or_empty(cls, value: str) -> str:
        # The emoji package knows Unicode's emoji list, ZWJ sequences, skin tones and flags;
        # a length check let "hello" through.
        if value and not emoji.is_emoji(value):
            raise PydanticCustomError("emoji", "emoji must be a single emoji, or empty to remove")
        return value


class ReactionMessage(_Message):
    """A reaction; it cannot quote (``context``)."""

    type: Literal["reaction"] = "reaction"
    reaction: Reaction

    @model_validator(mode="after")
    def _no_context(self) -> ReactionMessage:
        if self.context is not None:
            raise PydanticCustomError("reaction_context", "a reaction cannot carry context")
        return self


class TemplateMessage(_Message):
    """An approved template."""

    type: Literal["template"] = "template"
    template: Template

    @property
    def is_template(self) -> bool:
        """Templates may open a conversation outside the window."""
        return True


Message = Annotated[
    Annotated[TextMessage, Tag("type=text")]
    | Annotated[ImageMessage, Tag("type=image")]
    | Annotated[VideoMessage, Tag("type=video")]
    | Annotated[AudioMessage, Tag("type=audio")]
    | Annotated[DocumentMessage, Tag("type=document")]
    | Annotated[StickerMessage, Tag("type=sticker")]
    | Annotated[LocationMessage, Tag("type=location")]
    | Annotated[ContactsMessage, Tag("type=contacts")]
    | Annotated[InteractiveMessage, Tag("type=interactive")]
    | Annotated[ReactionMessage, Tag("type=reaction")]
    | Annotated[TemplateMessage, Tag("type=template")],
    by_type(
        "text",
        "image",
        "video",
        "audio",
        "document",
        "sticker",
        "location",
        "contacts",
        "interactive",
        "reaction",
        "template",
        default="text",  # Meta: a message without `type` is a text message
    ),
]

message_adapter: TypeAdapter[Message] = TypeAdapter(Message)
