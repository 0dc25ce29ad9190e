"""The job contract: each message type serialises to Meta's body, and each rule refuses by name."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from producer import InvalidRequest, SendRequest

PNID = "106540352242922"

# Meta's examples from ../shared/reference/whatsapp-cloud-api.md, section 1, as full bodies.
META_EXAMPLES: dict[str, dict[str, Any]] = {
    "text": {"type": "text", "text": {"preview_url": True, "body": "Hello https://example.com"}},
    "image": {"type": "image", "image": {"id": "1013859600285441", "caption": "..."}},
    "video": {"type": "video", "video": {"link": "https://host/clip.mp4", "caption": "..."}},
    "audio": {"type": "audio", "audio": {"id": "<MEDIA_ID>", "voice": True}},
    "document": {
        "type": "document",
        "document": {"link": "https://host/inv.pdf", "filename": "invoice.pdf", "caption": "..."},
    },
    "sticker": {"type": "sticker", "sticker": {"id": "<MEDIA_ID>"}},
    "location": {
        "type": "location",
        "location": {
            "latitude": "37.44",
            "longitude": "-122.16",
            "name": "Philz Coffee",
            "address": "101 Forest Ave",
        },
    },
    "contacts": {
        "type": "contacts",
        "contacts": [
            {
                "name": {"formatted_name": "John Doe", "first_name": "John"},
                "phones": [{"phone": "+15551234567", "type": "MOBILE", "wa_id": "15551234567"}],
                "emails": [{"email": "j@x.com", "type": "WORK"}],
                "birthday": "1999-01-23",
            }
        ],
    },
    "reaction": {
        "type": "reaction",
        "reaction": {"message_id": "wamid.HBgL1", "emoji": "\U0001f600"},
    },
    "button": {
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Your order"},
            "body": {"text": "Change or cancel?"},
            "footer": {"text": "Reply below"},
            "action": {
                "buttons": [{"type": "reply", "reply": {"id": "change", "title": "Change"}}]
            },
        },
    },
    "list": {
        "type": "interactive",
        "interactive": {
            "type": "list",
            "header": {"type": "text", "text": "Shipping"},
            "body": {"text": "Pick a speed"},
            "footer": {"text": "Prices incl. tax"},
            "action": {
                "button": "Options",
                "sections": [
                    {
                        "title": "ASAP",
                        "rows": [{"id": "x", "title": "Express", "description": "1-2 days"}],
                    }
                ],
            },
        },
    },
    "cta_url": {
        "type": "interactive",
        "interactive": {
            "type": "cta_url",
            "header": {"type": "image", "image": {"link": "https://host/banner.png"}},
            "body": {"text": "Tap for dates"},
            "footer": {"text": "Limited seats"},
            "action": {
                "name": "cta_url",
                "parameters": {"display_text": "See Dates", "url": "https://example.com/dates"},
            },
        },
    },
    "template": {
        "type": "template",
        "template": {
            "name": "order_confirmation",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "header",
                    "parameters": [{"type": "image", "image": {"id": "<MEDIA_ID>"}}],
                },
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Jessica"},
                        {"type": "text", "text": "SKBUP2-4CPIG9"},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": 0,
                    "parameters": [{"type": "text", "text": "abc"}],
                },
            ],
        },
    },
    "template_named": {
        "type": "template",
        "template": {
            "name": "greeting",
            "language": {"code": "en"},
            "components": [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}],
                }
            ],
        },
    },
    "location_request": {
        "type": "interactive",
        "interactive": {
            "type": "location_request_message",
            "body": {"text": "Where should we deliver?"},
            "action": {"name": "send_location"},
        },
    },
    "catalog": {
        "type": "interactive",
        "interactive": {
            "type": "catalog_message",
            "body": {"text": "Our spring collection"},
            "footer": {"text": "Free shipping"},
            "action": {
                "name": "catalog_message",
                "parameters": {"thumbnail_product_retailer_id": "SKU-1"},
            },
        },
    },
    "product": {
        "type": "interactive",
        "interactive": {
            "type": "product",
            "body": {"text": "Back in stock"},
            "action": {"catalog_id": "194836987003835", "product_retailer_id": "SKU-1"},
        },
    },
    "product_list": {
        "type": "interactive",
        "interactive": {
            "type": "product_list",
            "header": {"type": "text", "text": "Picked for you"},
            "body": {"text": "Two of each"},
            "action": {
                "catalog_id": "194836987003835",
                "sections": [
                    {"title": "Shoes", "product_items": [{"product_retailer_id": "SKU-1"}]},
                    {"title": "Socks", "product_items": [{"product_retailer_id": "SKU-2"}]},
                ],
            },
        },
    },
    "flow": {
        "type": "interactive",
        "interactive": {
            "type": "flow",
            "header": {"type": "text", "text": "Book a table"},
            "body": {"text": "Pick a time that suits you"},
            "action": {
                "name": "flow",
                "parameters": {
                    "flow_message_version": "3",
                    "flow_token": "booking-1042",
                    "flow_id": "1234567890",
                    "flow_cta": "Book",
                    "flow_action": "navigate",
                    "flow_action_payload": {"screen": "WELCOME", "data": {"party": 2}},
                },
            },
        },
    },
    "template_offer_and_coupon": {
        "type": "template",
        "template": {
            "name": "spring_sale",
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "header",
                    "parameters": [{"type": "image", "image": {"link": "https://host/sale.jpg"}}],
                },
                {
                    "type": "limited_time_offer",
                    "parameters": [
                        {
                            "type": "limited_time_offer",
                            "limited_time_offer": {"expiration_time_ms": 1798761600000},
                        }
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "copy_code",
                    "index": 0,
                    "parameters": [{"type": "coupon_code", "coupon_code": "SPRING25"}],
                },
                {
                    "type": "button",
                    "sub_type": "flow",
                    "index": "1",
                    "parameters": [
                        {
                            "type": "action",
                            "action": {
                                "flow_token": "sale-1",
                                "flow_action_data": {"tier": "gold"},
                            },
                        }
                    ],
                },
            ],
        },
    },
    "template_carousel": {
        "type": "template",
        "template": {
            "name": "summer_picks",
            "language": {"code": "en"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "Pablo"}]},
                {
                    "type": "carousel",
                    "cards": [
                        {
                            "card_index": i,
                            "components": [
                                {
                                    "type": "header",
                                    "parameters": [
                                        {
                                            "type": "image",
                                            "image": {"link": f"https://host/{i}.png"},
                                        }
                                    ],
                                },
                                {
                                    "type": "button",
                                    "sub_type": "quick_reply",
                                    "index": 0,
                                    "parameters": [{"type": "payload", "payload": f"card-{i}"}],
                                },
                            ],
                        }
                        for i in range(3)
                    ],
                },
            ],
        },
    },
    "address": {
        "type": "interactive",
        "interactive": {
            "type": "address_message",
            "body": {"text": "Where should we deliver?"},
            "action": {
                "name": "address_message",
                "parameters": {"country": "IN", "values": {"name": "Asha", "city": "Pune"}},
            },
        },
    },
    "reply_context": {
        "type": "text",
        "text": {"body": "Yes, it does."},
        "context": {"message_id": "wamid.HBgL2"},
    },
}


def request(message: dict[str, Any], **extra: Any) -> SendRequest:
    return SendRequest.model_validate(
        {"phone_number_id": PNID, "to": "+16505551234", "message": message, **extra}
    )


def refusal(message: dict[str, Any] | None = None, **fields: Any) -> InvalidRequest:
    data: dict[str, Any] = {"phone_number_id": PNID, "to": "+16505551234"}
    data["message"] = message if message is not None else META_EXAMPLES["text"]
    data.update(fields)
    with pytest.raises(ValidationError) as info:
        SendRequest.model_validate(data)
    return InvalidRequest.from_validation_error(info.value)


@pytest.mark.parametrize("name", sorted(META_EXAMPLES))
def test_graph_body_equals_metas_example(name: str) -> None:
    """Every type serialises to exactly Meta's JSON, with the common envelope around it."""
    message = META_EXAMPLES[name]
    body = request(message).graph_body(callback_data="msg_1")
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+16505551234",
        "biz_opaque_callback_data": "msg_1",
        **message,
    }


def test_job_payload_round_trips() -> None:
    """A request dumped to JSON and read back is the same request (jobs are JSON, not pickles)."""
    original = request(META_EXAMPLES["template"], idempotency_key="k1", metadata={"crm": "42"})
    assert SendRequest.model_validate_json(original.model_dump_json()) == original


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 (650) 555-1234", "+16505551234"),
        ("16505551234", "+16505551234"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+55 11 91234-5678", "+5511912345678"),
    ],
)
def test_recipient_is_normalised_to_e164(raw: str, e164: str) -> None:
    """Punctuation goes, the country code stays, the result is E.164."""
    assert request(META_EXAMPLES["text"], to=raw).to == e164


@pytest.mark.parametrize("raw", ["", "hello", "+1 555", "+999 1234567", "12345678901234567890"])
def test_impossible_recipient_is_refused(raw: str) -> None:
    """A recipient that cannot be a phone number in any country is refused on `to`."""
    error = refusal(to=raw)
    assert [(e.field, e.rule) for e in error.errors] == [("to", "phone_number")]


@pytest.mark.parametrize(
    ("message", "field", "rule"),
    [
        ({"type": "text", "text": {"body": "x" * 4097}}, "message.text.body", "string_too_long"),
        ({"type": "text", "text": {"body": ""}}, "message.text.body", "string_too_short"),
        (
            {"type": "text", "text": {"body": "hi", "bold": True}},
            "message.text.bold",
            "extra_forbidden",
        ),
        ({"type": "fax", "fax": {}}, "message", "type"),
        ({"type": "image", "image": {"caption": "no source"}}, "message.image", "media_source"),
        (
            {"type": "image", "image": {"id": "1", "link": "https://h/a.png"}},
            "message.image",
            "media_source",
        ),
        (
            {"type": "image", "image": {"link": "https://h/a.gif"}},
            "message.image.link",
            "media_type",
        ),
        ({"type": "image", "image": {"link": "ftp://h/a.png"}}, "message.image.link", "url_scheme"),
        (
            {"type": "image", "image": {"id": "1", "caption": "c" * 1025}},
            "message.image.caption",
            "string_too_long",
        ),
        (
            {"type": "image", "image": {"id": "1", "size_bytes": 5 * 1024 * 1024 + 1}},
            "message.image.size_bytes",
            "media_too_large",
        ),
        (
            {"type": "image", "image": {"id": "1", "mime_type": "image/webp"}},
            "message.image.mime_type",
            "media_type",
        ),
        (
            {"type": "video", "video": {"id": "1", "size_bytes": 16 * 1024 * 1024 + 1}},
            "message.video.size_bytes",
            "media_too_large",
        ),
        (
            {"type": "video", "video": {"link": "https://h/clip.mov"}},
            "message.video.link",
            "media_type",
        ),
        (
            {"type": "audio", "audio": {"id": "1", "caption": "no"}},
            "message.audio.caption",
            "extra_forbidden",
        ),
        (
            {"type": "audio", "audio": {"id": "1", "voice": True, "mime_type": "audio/mpeg"}},
            "message.audio",
            "voice_media_type",
        ),
        (
            {"type": "document", "document": {"id": "1", "size_bytes": 100 * 1024 * 1024 + 1}},
            "message.document.size_bytes",
            "media_too_large",
        ),
        (
            {"type": "sticker", "sticker": {"id": "1", "size_bytes": 200 * 1024}},
            "message.sticker",
            "media_too_large",
        ),
        (
            {"type": "sticker", "sticker": {"id": "1", "size_bytes": 600 * 1024, "animated": True}},
            "message.sticker.size_bytes",
            "media_too_large",
        ),
        (
            {"type": "location", "location": {"latitude": 91, "longitude": 0}},
            "message.location.latitude",
            "coordinate_range",
        ),
        (
            {"type": "location", "location": {"latitude": 0, "longitude": "-180.5"}},
            "message.location.longitude",
            "coordinate_range",
        ),
        ({"type": "contacts", "contacts": []}, "message.contacts", "too_short"),
        (
            {
                "type": "reaction",
                "reaction": {"message_id": "w", "emoji": "\U0001f600"},
                "context": {"message_id": "w"},
            },
            "message",
            "reaction_context",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "b"},
                    "action": {
                        "buttons": [
                            {"type": "reply", "reply": {"id": str(i), "title": f"t{i}"}}
                            for i in range(4)
                        ]
                    },
                },
            },
            "message.interactive.action.buttons",
            "too_long",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "b"},
                    "action": {
                        "buttons": [{"type": "reply", "reply": {"id": "1", "title": "x" * 21}}]
                    },
                },
            },
            "message.interactive.action.buttons.0.reply.title",
            "string_too_long",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "b" * 1025},
                    "action": {"buttons": [{"type": "reply", "reply": {"id": "1", "title": "x"}}]},
                },
            },
            "message.interactive",
            "string_too_long",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "body": {"text": "b"},
                    "action": {
                        "button": "Go",
                        "sections": [
                            {
                                "title": "A",
                                "rows": [{"id": f"a{i}", "title": "r"} for i in range(6)],
                            },
                            {
                                "title": "B",
                                "rows": [{"id": f"b{i}", "title": "r"} for i in range(5)],
                            },
                        ],
                    },
                },
            },
            "message.interactive.action",
            "too_many_rows",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "header": {"type": "image", "image": {"id": "1"}},
                    "body": {"text": "b"},
                    "action": {"button": "Go", "sections": [{"rows": [{"id": "a", "title": "r"}]}]},
                },
            },
            "message.interactive",
            "header_type",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "cta_url",
                    "body": {"text": "b"},
                    "action": {
                        "name": "cta_url",
                        "parameters": {"display_text": "x" * 21, "url": "https://e"},
                    },
                },
            },
            "message.interactive.action.parameters.display_text",
            "string_too_long",
        ),
        (
            {"type": "template", "template": {"name": "Bad Name", "language": {"code": "en_US"}}},
            "message.template.name",
            "string_pattern_mismatch",
        ),
        (
            {
                "type": "template",
                "template": {
                    "name": "t",
                    "language": {"code": "en"},
                    "components": [
                        {
                            "type": "body",
                            "parameters": [
                                {"type": "text", "text": "a", "parameter_name": "a"},
                                {"type": "text", "text": "b"},
                            ],
                        }
                    ],
                },
            },
            "message.template.components.0",
            "mixed_parameters",
        ),
        (
            {
                "type": "template",
                "template": {
                    "name": "t",
                    "language": {"code": "en"},
                    "components": [{"type": "button", "sub_type": "url", "index": "12"}],
                },
            },
            "message.template.components.0",
            "button_index",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "product_list",
                    "header": {"type": "text", "text": "h"},
                    "body": {"text": "b"},
                    "action": {
                        "catalog_id": "1",
                        "sections": [
                            {
                                "title": "A",
                                "product_items": [
                                    {"product_retailer_id": f"s{i}"} for i in range(31)
                                ],
                            }
                        ],
                    },
                },
            },
            "message.interactive.action",
            "too_many_products",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "product_list",
                    "header": {"type": "text", "text": "h"},
                    "body": {"text": "b"},
                    "action": {
                        "catalog_id": "1",
                        "sections": [
                            {"product_items": [{"product_retailer_id": "a"}]},
                            {"product_items": [{"product_retailer_id": "b"}]},
                        ],
                    },
                },
            },
            "message.interactive.action",
            "section_title",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "location_request_message",
                    "body": {"text": "b"},
                    "footer": {"text": "f"},
                    "action": {"name": "send_location"},
                },
            },
            "message.interactive.footer",
            "extra_forbidden",
        ),
        (
            {
                "type": "interactive",
                "interactive": {
                    "type": "flow",
                    "body": {"text": "b"},
                    "action": {
                        "name": "flow",
                        "parameters": {
                            "flow_message_version": "3",
                            "flow_id": "1",
                            "flow_name": "n",
                            "flow_cta": "Go",
                        },
                    },
                },
            },
            "message.interactive.action.parameters",
            "flow_reference",
        ),
        (
            {
                "type": "template",
                "template": {
                    "name": "t",
                    "language": {"code": "en"},
                    "components": [
                        {
                            "type": "carousel",
                            "cards": [
                                {
                                    "card_index": 1,
                                    "components": [
                                        {
                                            "type": "body",
                                            "parameters": [{"type": "text", "text": "x"}],
                                        }
                                    ],
                                }
                            ],
                        }
                    ],
                },
            },
            "message.template.components.0",
            "card_index",
        ),
        (
            {
                "type": "template",
                "template": {
                    "name": "t",
                    "language": {"code": "en"},
                    "components": [
                        {
                            "type": "button",
                            "sub_type": "copy_code",
                            "index": 0,
                            "parameters": [{"type": "coupon_code", "coupon_code": "X" * 16}],
                        }
                    ],
                },
            },
            "message.template.components.0.parameters.0.coupon_code",
            "string_too_long",
        ),
    ],
)
def test_rule_violation_names_field_and_rule(
    message: dict[str, Any], field: str, rule: str
) -> None:
    """Each contract rule refuses with the dotted path of the field and the rule's code."""
    error = refusal(message)
    assert (field, rule) in [(e.field, e.rule) for e in error.errors], error.errors


def test_media_hints_are_not_sent_to_meta() -> None:
    """mime_type, size_bytes and animated are checked but never part of the Graph body."""
    body = request(
        {"type": "sticker", "sticker": {"id": "9", "mime_type": "image/webp", "size_bytes": 90_000}}
    ).graph_body()
    assert body["sticker"] == {"id": "9"}


def test_media_within_limits_is_accepted() -> None:
    """Sizes and types at Meta's limits pass."""
    request(
        {
            "type": "image",
            "image": {"id": "1", "size_bytes": 5 * 1024 * 1024, "mime_type": "image/png"},
        }
    )
    request({"type": "sticker", "sticker": {"id": "1", "size_bytes": 500 * 1024, "animated": True}})
    request(
        {"type": "document", "document": {"link": "https://h/report.csv", "filename": "report.csv"}}
    )
    request({"type": "image", "image": {"link": "https://cdn.example.com/render?id=42"}})


def test_callback_data_over_512_characters_is_refused() -> None:
    """biz_opaque_callback_data follows Meta's 512-character limit."""
    with pytest.raises(ValueError, match="512"):
        request(META_EXAMPLES["text"]).graph_body(callback_data="x" * 513)


def test_invalid_request_lists_every_broken_rule() -> None:
    """Several broken rules are reported together, so a caller fixes them in one pass."""
    error = refusal({"type": "text", "text": {"body": ""}}, to="nope", phone_number_id="abc")
    assert {e.field for e in error.errors} == {"to", "phone_number_id", "message.text.body"}
    assert error.code == "invalid_request"
    assert "message.text.body" in str(error)


def test_templates_are_the_only_kind_allowed_outside_the_window() -> None:
    """is_template is true for templates alone."""
    kinds = {name: request(m).message.is_template for name, m in META_EXAMPLES.items()}
    assert {name for name, is_template in kinds.items() if is_template} == {
        "template",
        "template_named",
        "template_offer_and_coupon",
        "template_carousel",
    }
