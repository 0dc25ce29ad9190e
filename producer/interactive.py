"""Interactive messages, with Meta's limits for each kind.

Reply buttons, lists, URL buttons, location requests, the catalog, one product, a product
list, WhatsApp Flows and address requests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from producer import limits
from producer._model import ContractModel, by_type
from producer.media import Document, Image, Video

__all__ = [
    "AddressAction",
    "AddressInteractive",
    "AddressParameters",
    "ButtonAction",
    "ButtonInteractive",
    "CatalogAction",
    "CatalogInteractive",
    "CatalogParameters",
    "CtaUrlAction",
    "CtaUrlInteractive",
    "CtaUrlParameters",
    "FlowAction",
    "FlowActionPayload",
    "FlowInteractive",
    "FlowParameters",
    "Interactive",
    "InteractiveBody",
    "InteractiveFooter",
    "InteractiveHeader",
    "ListAction",
    "ListInteractive",
    "ListRow",
    "ListSection",
    "LocationRequestInteractive",
    "ProductAction",
    "ProductInteractive",
    "ProductItem",
    "ProductListAction",
    "ProductListInteractive",
    "ProductSection",
    "ReplyButton",
    "ReplyButtonContent",
    "SendLocationAction",
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


class SendLocationAction(ContractModel):
    """The one button of a location request; Meta names it ``send_location``."""

    name: Literal["send_location"] = "send_location"


class LocationRequestInteractive(ContractModel):
    """Asks the customer to share a location: body up to 1,024 characters, no header."""

    type: Literal["location_request_message"] = "location_request_message"
    body: InteractiveBody
    action: SendLocationAction

    @model_validator(mode="after")
    def _body_length(self) -> LocationRequestInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class CatalogParameters(ContractModel):
    """The product whose image heads the message (else the catalog's first)."""

    thumbnail_product_retailer_id: str = Field(min_length=1)


class CatalogAction(ContractModel):
    """A View catalog button; Meta names it ``catalog_message``."""

    name: Literal["catalog_message"] = "catalog_message"
    parameters: CatalogParameters | None = None


class CatalogInteractive(ContractModel):
    """The business's catalog: body up to 1,024 characters, optional footer, no header."""

    type: Literal["catalog_message"] = "catalog_message"
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: CatalogAction

    @model_validator(mode="after")
    def _body_length(self) -> CatalogInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class ProductAction(ContractModel):
    """One product of a catalog, by its retailer id (SKU)."""

    catalog_id: str = Field(min_length=1)
    product_retailer_id: str = Field(min_length=1)


class ProductInteractive(ContractModel):
    """One product: optional body (1,024) and footer, no header."""

    type: Literal["product"] = "product"
    body: InteractiveBody | None = None
    footer: InteractiveFooter | None = None
    action: ProductAction

    @model_validator(mode="after")
    def _body_length(self) -> ProductInteractive:
        if self.body is not None:
            _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class ProductItem(ContractModel):
    """A product of a section, by its retailer id (SKU)."""

    product_retailer_id: str = Field(min_length=1)


class ProductSection(ContractModel):
    """A titled group of products."""

    title: str | None = Field(
        default=None, min_length=1, max_length=limits.PRODUCT_SECTION_TITLE_MAX_CHARS
    )
    product_items: list[ProductItem] = Field(min_length=1)


class ProductListAction(ContractModel):
    """Up to 10 sections of up to 30 products in all, from one catalog."""

    catalog_id: str = Field(min_length=1)
    sections: list[ProductSection] = Field(
        min_length=1, max_length=limits.PRODUCT_LIST_SECTIONS_MAX
    )

    @model_validator(mode="after")
    def _limits(self) -> ProductListAction:
        items = sum(len(s.product_items) for s in self.sections)
        if items > limits.PRODUCT_LIST_ITEMS_MAX:
            raise PydanticCustomError(
                "too_many_products",
                "at most {max} products across all sections",
                {"max": limits.PRODUCT_LIST_ITEMS_MAX},
            )
        if len(self.sections) > 1 and any(s.title is None for s in self.sections):
            raise PydanticCustomError(
                "section_title", "every section needs a title when there is more than one"
            )
        return self


class ProductListInteractive(ContractModel):
    """Several products: a text header (required), body up to 1,024, optional footer."""

    type: Literal["product_list"] = "product_list"
    header: InteractiveHeader
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: ProductListAction

    @model_validator(mode="after")
    def _text_header_and_body(self) -> ProductListInteractive:
        if self.header.type != "text":
            raise PydanticCustomError("header_type", "a product list's header must be text")
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class FlowActionPayload(ContractModel):
    """The screen a ``navigate`` flow opens on, and the data it starts with."""

    screen: str = Field(min_length=1)
    data: dict[str, Any] | None = None


class FlowParameters(ContractModel):
    """Which flow to open (``flow_id`` or ``flow_name``, not both), and how."""

    flow_message_version: Literal["3"] = "3"
    flow_token: str | None = None
    flow_id: str | None = Field(default=None, min_length=1)
    flow_name: str | None = Field(default=None, min_length=1)
    flow_cta: str = Field(min_length=1, max_length=limits.FLOW_CTA_MAX_CHARS)
    flow_action: Literal["navigate", "data_exchange"] | None = None
    flow_action_payload: FlowActionPayload | None = None
    mode: Literal["published", "draft"] | None = None

    @model_validator(mode="after")
    def _one_flow_and_a_payload_only_to_navigate(self) -> FlowParameters:
        if (self.flow_id is None) == (self.flow_name is None):
            raise PydanticCustomError("flow_reference", "give flow_id or flow_name, not both")
        if self.flow_action == "data_exchange" and self.flow_action_payload is not None:
            raise PydanticCustomError(
                "flow_payload", "flow_action_payload goes only with flow_action navigate"
            )
        return self


class FlowAction(ContractModel):
    """Meta names this action ``flow``."""

    name: Literal["flow"] = "flow"
    parameters: FlowParameters


class FlowInteractive(ContractModel):
    """A WhatsApp Flow behind a button: body up to 1,024 characters."""

    type: Literal["flow"] = "flow"
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: FlowAction

    @model_validator(mode="after")
    def _body_length(self) -> FlowInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


class AddressParameters(ContractModel):
    """The country whose address form opens (Meta: India and Singapore), and what fills it."""

    country: Literal["IN", "SG"]
    values: dict[str, Any] | None = None
    saved_addresses: list[dict[str, Any]] | None = None
    validation_errors: dict[str, Any] | None = None


class AddressAction(ContractModel):
    """Meta names this action ``address_message``."""

    name: Literal["address_message"] = "address_message"
    parameters: AddressParameters


class AddressInteractive(ContractModel):
    """Asks for a delivery address in a native form: body up to 1,024 characters."""

    type: Literal["address_message"] = "address_message"
    header: InteractiveHeader | None = None
    body: InteractiveBody
    footer: InteractiveFooter | None = None
    action: AddressAction

    @model_validator(mode="after")
    def _body_length(self) -> AddressInteractive:
        _body_at_most(self.body, limits.INTERACTIVE_BODY_MAX_CHARS)
        return self


Interactive = Annotated[
    Annotated[ButtonInteractive, Tag("type=button")]
    | Annotated[ListInteractive, Tag("type=list")]
    | Annotated[CtaUrlInteractive, Tag("type=cta_url")]
    | Annotated[LocationRequestInteractive, Tag("type=location_request_message")]
    | Annotated[CatalogInteractive, Tag("type=catalog_message")]
    | Annotated[ProductInteractive, Tag("type=product")]
    | Annotated[ProductListInteractive, Tag("type=product_list")]
    | Annotated[FlowInteractive, Tag("type=flow")]
    | Annotated[AddressInteractive, Tag("type=address_message")],
    by_type(
        "button",
        "list",
        "cta_url",
        "location_request_message",
        "catalog_message",
        "product",
        "product_list",
        "flow",
        "address_message",
    ),
]
