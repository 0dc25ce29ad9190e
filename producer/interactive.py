"""Interactive messages: reply buttons, lists and call-to-action URL buttons, with Meta's limits."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from producer import limits
from producer._model import ContractModel, by_type
from producer.media import Document, Image, Video

__all__ = [
    "ButtonAction",
    "ButtonInteractive",
    "CtaUrlAction",
    "CtaUrlInteractive",
    "CtaUrlParameters",
    "Interactive",
    "InteractiveBody",
    "InteractiveFooter",
    "InteractiveHeader",
    "ListAction",
    "ListInteractive",
    "ListRow",
    "ListSection",
    "ReplyButton",
    "ReplyButtonContent",
]


class InteractiveHeader(ContractModel):
    """Text (up to 60 characters) or one media object, matching ``type``."""

    type: Literal["text", "image", "video", "document"]
    text: str | None = Field(default=None, min_length=1, max_length=limits.HEADER_TEXT_MAX_CHARS)
    image: Image | None = None
    video: Video | None = None
    document: Document | None = None

    @model_validator(mode="after")
    def _content_matches_type(self) -> InteractiveHeader:
        given = [k for k in ("text", "image", "video", "document") if getattr(self, k) is not None]
        if given != [self.type]:
            raise PydanticCustomError(
                "header_content",
                "a {type} header needs exactly the field {type}",
                {"type": self.type},
            )
        return self


class InteractiveBody(ContractModel):
    """The main text; each interactive type sets its own maximum."""

    text: str = Field(min_length=1, max_length=limits.LIST_BODY_MAX_CHARS)


class InteractiveFooter(ContractModel):
    """Small print under the body, up to 60 characters."""

    text: str = Field(min_length=1, max_length=limits.FOOTER_MAX_CHARS)


def _body_at_most(body: InteractiveBody, max_chars: int) -> None:
    if len(body.text) > max_chars:
        raise PydanticCustomError(
            "string_too_long",
            "body.text should have at most {max} characters",
            {"max": max_chars},
        )


class ReplyButtonContent(ContractModel):
    """A quick-reply button's id (returned in the reply webhook) and title."""

    id: str = Field(min_length=1, max_length=limits.REPLY_BUTTON_ID_MAX_CHARS)
    title: str = Field(min_length=1, max_length=limits.REPLY_BUTTON_TITLE_MAX_CHARS)


class ReplyButton(ContractModel):
    """One reply button."""

    type: Literal["reply"] = "reply"
    reply: ReplyButtonContent


class ButtonAction(ContractModel):
    """One to three buttons with unique ids and titles."""

    buttons: list[ReplyButton] = Field(min_length=1, max_length=limits.REPLY_BUTTONS_MAX)

    @model_validator(mode="after")
    def _unique(self) -> ButtonAction:
        for attr in ("id", "title"):
            values = [getattr(b.reply, attr) for b in self.buttons]
            if len(set(values)) != len(values):
                raise PydanticCustomError(
                    "unique_buttons", "button {attr}s must be unique", {"attr": attr}
                )
        return self


class ButtonInteractive(ContractModel):
    """Reply buttons: body up to 1,024 characters."""

    type: Literal["button"] = "button"
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: ButtonAction

    @model_validator(mode="after")
    def _body_length(self) -> ButtonInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class ListRow(ContractModel):
    """One choosable row."""

    id: str = Field(min_length=1, max_length=limits.LIST_ROW_ID_MAX_CHARS)
    title: str = Field(min_length=1, max_length=limits.LIST_ROW_TITLE_MAX_CHARS)
    description: str | None = Field(default=None, max_length=limits.LIST_ROW_DESCRIPTION_MAX_CHARS)


class ListSection(ContractModel):
    """A titled group of rows."""

    title: str | None = Field(
        default=None, min_length=1, max_length=limits.LIST_SECTION_TITLE_MAX_CHARS
    )
    rows: list[ListRow] = Field(min_length=1, max_length=limits.LIST_ROWS_MAX)


class ListAction(ContractModel):
    """The menu button's label and up to 10 sections holding up to 10 rows in all."""

    button: str = Field(min_length=1, max_length=limits.LIST_BUTTON_MAX_CHARS)
    sections: list[ListSection] = Field(min_length=1, max_length=limits.LIST_SECTIONS_MAX)

    @model_validator(mode="after")
    def _row_rules(self) -> ListAction:
        rows = [row for section in self.sections for row in section.rows]
        if len(rows) > limits.LIST_ROWS_MAX:
            raise PydanticCustomError(
                "too_many_rows",
                "a list holds at most {max} rows in all",
                {"max": limits.LIST_ROWS_MAX},
            )
        if len({row.id for row in rows}) != len(rows):
            raise PydanticCustomError("unique_rows", "row ids must be unique across sections")
        if len(self.sections) > 1 and any(s.title is None for s in self.sections):
            raise PydanticCustomError(
                "section_title", "every section needs a title when there is more than one"
            )
        return self


class ListInteractive(ContractModel):
    """A list menu: text-only header, body up to 4,096 characters."""

    type: Literal["list"] = "list"
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: ListAction

    @model_validator(mode="after")
    def _text_header(self) -> ListInteractive:
        if self.header is not None and self.header.type != "text":
            raise PydanticCustomError("header_type", "a list message's header must be text")
        return self


class CtaUrlParameters(ContractModel):
    """The button's label and where it leads."""

    display_text: str = Field(min_length=1, max_length=limits.CTA_DISPLAY_TEXT_MAX_CHARS)
    url: str = Field(pattern=r"^https?://\S+$")


class CtaUrlAction(ContractModel):
    """Meta names this action ``cta_url``."""

    name: Literal["cta_url"] = "cta_url"
    parameters: CtaUrlParameters


class CtaUrlInteractive(ContractModel):
    """A call-to-action URL button: body up to 1,024 characters."""

    type: Literal["cta_url"] = "cta_url"
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: CtaUrlAction

    @model_validator(mode="after")
    def _body_length(self) -> CtaUrlInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


Interactive = Annotated[
    Annotated[ButtonInteractive, Tag("type=button")]
    | Annotated[ListInteractive, Tag("type=list")]
    | Annotated[CtaUrlInteractive, Tag("type=cta_url")],
    by_type("button", "list", "cta_url"),
]
