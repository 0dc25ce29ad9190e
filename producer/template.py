"""Template messages: the only kind Meta delivers outside the 24-hour service window.

Parameters are positional (``{{1}}``, order matters) or named (``{{first_name}}``, each with
``parameter_name``); one component never mixes the two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from producer import limits
from producer._model import ContractModel, by_type
from producer.media import Document, Image, Video

__all__ = [
    "ActionParameter",
    "ButtonActionData",
    "ButtonComponent",
    "CardComponent",
    "CarouselCard",
    "CarouselComponent",
    "Component",
    "CouponCodeParameter",
    "Currency",
    "CurrencyParameter",
    "DateTime",
    "DateTimeParameter",
    "DocumentParameter",
    "ImageParameter",
    "Language",
    "LimitedTimeOffer",
    "LimitedTimeOfferComponent",
    "LimitedTimeOfferParameter",
    "LocationParameter",
    "Parameter",
    "ParameterLocation",
    "PayloadParameter",
    "Template",
    "TemplateBodyComponent",
    "TemplateHeaderComponent",
    "TextParameter",
    "VideoParameter",
]


class _Parameter(ContractModel):
    parameter_name: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")


class TextParameter(_Parameter):
    """Text substituted for a variable."""

    type: Literal["text"] = "text"
    text: str = Field(min_length=1)


class Currency(ContractModel):
    """An amount in thousandths of the currency unit, with a fallback for old clients."""

    fallback_value: str = Field(min_length=1)
    code: str = Field(pattern=r"^[A-Z]{3}$")
    amount_1000: int


class CurrencyParameter(_Parameter):
    """A localised currency amount."""

    type: Literal["currency"] = "currency"
    currency: Currency


class DateTime(ContractModel):
    """A date shown as ``fallback_value``."""

    fallback_value: str = Field(min_length=1)


class DateTimeParameter(_Parameter):
    """A localised date and time."""

    type: Literal["date_time"] = "date_time"
    date_time: DateTime


class ImageParameter(_Parameter):
    """An image header."""

    type: Literal["image"] = "image"
    image: Image


class VideoParameter(_Parameter):
    """A video header."""

    type: Literal["video"] = "video"
    video: Video


class DocumentParameter(_Parameter):
    """A document header."""

    type: Literal["document"] = "document"
    document: Document


class ParameterLocation(ContractModel):
    """A location header's coordinates."""

    latitude: float | str
    longitude: float | str
    name: str | None = None
    address: str | None = None


class LocationParameter(_Parameter):
    """A location header."""

    type: Literal["location"] = "location"
    location: ParameterLocation


class PayloadParameter(_Parameter):
    """The payload a quick-reply button returns in the reply webhook."""

    type: Literal["payload"] = "payload"
    payload: str = Field(min_length=1)


class CouponCodeParameter(_Parameter):
    """The code a copy-code button copies (up to 15 characters)."""

    type: Literal["coupon_code"] = "coupon_code"
    coupon_code: str = Field(min_length=1, max_length=limits.COUPON_CODE_MAX_CHARS)


class ButtonActionData(ContractModel):
    """A flow button's token and starting data, or a catalog button's thumbnail."""

    flow_token: str | None = None
    flow_action_data: dict[str, Any] | None = None
    thumbnail_product_retailer_id: str | None = None


class ActionParameter(_Parameter):
    """What a flow or catalog button opens with."""

    type: Literal["action"] = "action"
    action: ButtonActionData


class LimitedTimeOffer(ContractModel):
    """When the offer ends, in Unix milliseconds (the countdown's end)."""

    expiration_time_ms: int = Field(gt=0)


class LimitedTimeOfferParameter(_Parameter):
    """A limited-time offer's expiry."""

    type: Literal["limited_time_offer"] = "limited_time_offer"
    limited_time_offer: LimitedTimeOffer


Parameter = Annotated[
    Annotated[TextParameter, Tag("type=text")]
    | Annotated[CurrencyParameter, Tag("type=currency")]
    | Annotated[DateTimeParameter, Tag("type=date_time")]
    | Annotated[ImageParameter, Tag("type=image")]
    | Annotated[VideoParameter, Tag("type=video")]
    | Annotated[DocumentParameter, Tag("type=document")]
    | Annotated[LocationParameter, Tag("type=location")]
    | Annotated[PayloadParameter, Tag("type=payload")]
    | Annotated[CouponCodeParameter, Tag("type=coupon_code")]
    | Annotated[ActionParameter, Tag("type=action")]
    | Annotated[LimitedTimeOfferParameter, Tag("type=limited_time_offer")],
    by_type(
        "text",
        "currency",
        "date_time",
        "image",
        "video",
        "document",
        "location",
        "payload",
        "coupon_code",
        "action",
        "limited_time_offer",
    ),
]


def _not_mixed(parameters: list[Parameter]) -> None:
    named = [p.parameter_name is not None for p in parameters]
    if any(named) and not all(named):
        raise PydanticCustomError(
            "mixed_parameters",
            "parameters are either all named (parameter_name) or all positional",
        )


class TemplateHeaderComponent(ContractModel):
    """Fills a header's variable or media."""

    type: Literal["header"] = "header"
    parameters: list[Parameter] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_style(self) -> TemplateHeaderComponent:
        _not_mixed(self.parameters)
        return self


class TemplateBodyComponent(ContractModel):
    """Fills the body's variables."""

    type: Literal["body"] = "body"
    parameters: list[Parameter] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_style(self) -> TemplateBodyComponent:
        _not_mixed(self.parameters)
        return self


class ButtonComponent(ContractModel):
    """Fills one button's variable (a URL suffix, a quick-reply payload, a code)."""

    type: Literal["button"] = "button"
    sub_type: Literal["quick_reply", "url", "copy_code", "flow", "catalog", "voice_call"]
    # Meta's examples send an integer; many libraries send "0". Both are kept as given.
    index: int | str
    parameters: list[Parameter] = Field(default_factory=list)

    @model_validator(mode="after")
    def _index_in_range(self) -> ButtonComponent:
        index = self.index
        if isinstance(index, str):
            if not index.isdigit():
                raise PydanticCustomError("button_index", "index must be a number from 0 to 9")
            index = int(index)
        if not 0 <= index <= limits.TEMPLATE_BUTTON_INDEX_MAX:
            raise PydanticCustomError("button_index", "index must be a number from 0 to 9")
        return self


class LimitedTimeOfferComponent(ContractModel):
    """A limited-time offer template's countdown: one ``limited_time_offer`` parameter."""

    type: Literal["limited_time_offer"] = "limited_time_offer"
    parameters: list[Parameter] = Field(min_length=1, max_length=1)

    @model_validator(mode="after")
    def _an_expiry(self) -> LimitedTimeOfferComponent:
        if self.parameters[0].type != "limited_time_offer":
            raise PydanticCustomError(
                "offer_parameter", "the parameter must be of type limited_time_offer"
            )
        return self


CardComponent = Annotated[
    Annotated[TemplateHeaderComponent, Tag("type=header")]
    | Annotated[TemplateBodyComponent, Tag("type=body")]
    | Annotated[ButtonComponent, Tag("type=button")],
    by_type("header", "body", "button"),
]


class CarouselCard(ContractModel):
    """One card: its media header's parameter, and its body's and buttons' if they have any."""

    card_index: int = Field(ge=0, le=limits.CAROUSEL_CARDS_MAX - 1)
    components: list[CardComponent] = Field(min_length=1)


class CarouselComponent(ContractModel):
    """A media card carousel: up to 10 cards, in order, each index once."""

    type: Literal["carousel"] = "carousel"
    cards: list[CarouselCard] = Field(min_length=1, max_length=limits.CAROUSEL_CARDS_MAX)

    @model_validator(mode="after")
    def _indexes_in_order(self) -> CarouselComponent:
        if [c.card_index for c in self.cards] != list(range(len(self.cards))):
            raise PydanticCustomError("card_index", "card_index must run 0, 1, 2... in order")
        return self


Component = Annotated[
    Annotated[TemplateHeaderComponent, Tag("type=header")]
    | Annotated[TemplateBodyComponent, Tag("type=body")]
    | Annotated[ButtonComponent, Tag("type=button")]
    | Annotated[LimitedTimeOfferComponent, Tag("type=limited_time_offer")]
    | Annotated[CarouselComponent, Tag("type=carousel")],
    by_type("header", "body", "button", "limited_time_offer", "carousel"),
]


class Language(ContractModel):
    """The approved translation to send, e.g. ``en_US``."""

    code: str = Field(pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
    policy: Literal["deterministic"] | None = None


class Template(ContractModel):
    """An approved template by name and language, with its variables filled."""

    name: str = Field(
        min_length=1, max_length=limits.TEMPLATE_NAME_MAX_CHARS, pattern=r"^[a-z0-9_]+$"
    )
    language: Language
    components: list[Component] | None = None

    @model_validator(mode="after")
    def _one_header_and_body(self) -> Template:
        kinds = [c.type for c in self.components or ()]
        for kind in ("header", "body", "limited_time_offer", "carousel"):
            if kinds.count(kind) > 1:
                raise PydanticCustomError(
                    "duplicate_component", "at most one {kind} component", {"kind": kind}
                )
        return self
