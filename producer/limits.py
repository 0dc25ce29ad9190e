"""Meta's published limits, as the contract enforces them (reference sections 1 and 2).

Kept as named data in one place so the rules in the models read as sentences and a change
in Meta's documentation is a one-line change here.
"""

from typing import Final

TEXT_BODY_MAX_CHARS: Final = 4096
CAPTION_MAX_CHARS: Final = 1024
FILENAME_MAX_CHARS: Final = 240
CALLBACK_DATA_MAX_CHARS: Final = 512

CALLER_CALLBACK_DATA_MAX_CHARS: Final = 512 - 35
"""A caller's own ``biz_opaque_callback_data``: waq puts its message id (34 characters) and
a ``:`` in front, within Meta's 512."""

# The caller's own fields, capped like Stripe's metadata so a request stays small in Redis
# (it is kept with the status for the retention period, and in any dead letter).
IDEMPOTENCY_KEY_MAX_CHARS: Final = 255
SCHEDULE_MAX_AHEAD_S: Final = 30 * 24 * 3600
"""How far ahead ``send_at`` may be (waq's rule: a status record lives 7 days by default, and
a month-old plan is better kept by the caller)."""
METADATA_MAX_KEYS: Final = 50
METADATA_KEY_MAX_CHARS: Final = 40
METADATA_VALUE_MAX_CHARS: Final = 500

MB: Final = 1024 * 1024
KB: Final = 1024

IMAGE_MAX_BYTES: Final = 5 * MB
VIDEO_MAX_BYTES: Final = 16 * MB
AUDIO_MAX_BYTES: Final = 16 * MB
DOCUMENT_MAX_BYTES: Final = 100 * MB
STICKER_STATIC_MAX_BYTES: Final = 100 * KB
STICKER_ANIMATED_MAX_BYTES: Final = 500 * KB

IMAGE_MIME_TYPES: Final = frozenset({"image/jpeg", "image/png"})
VIDEO_MIME_TYPES: Final = frozenset({"video/mp4", "video/3gpp"})
AUDIO_MIME_TYPES: Final = frozenset(
    {"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}
)
VOICE_MIME_TYPES: Final = frozenset({"audio/ogg"})
DOCUMENT_MIME_TYPES: Final = frozenset(
    {
        "text/plain",
        "application/pdf",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.ms-powerpoint",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    }
)
STICKER_MIME_TYPES: Final = frozenset({"image/webp"})

# File extensions whose media type is certain enough to refuse a link before Meta fails
# it asynchronously with 131053. An explicit table rather than ``mimetypes``, whose answers
# depend on the host's /etc/mime.types.
EXTENSION_MIME_TYPES: Final = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "heic": "image/heic",
    "svg": "image/svg+xml",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "mp4": "video/mp4",
    "3gp": "video/3gpp",
    "3gpp": "video/3gpp",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
    "mkv": "video/x-matroska",
    "webm": "video/webm",
    "aac": "audio/aac",
    "amr": "audio/amr",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "wav": "audio/wav",
    "flac": "audio/flac",
}

INTERACTIVE_BODY_MAX_CHARS: Final = 1024
LIST_BODY_MAX_CHARS: Final = 4096
HEADER_TEXT_MAX_CHARS: Final = 60
FOOTER_MAX_CHARS: Final = 60
REPLY_BUTTONS_MAX: Final = 3
REPLY_BUTTON_ID_MAX_CHARS: Final = 256
REPLY_BUTTON_TITLE_MAX_CHARS: Final = 20
LIST_BUTTON_MAX_CHARS: Final = 20
LIST_SECTIONS_MAX: Final = 10
LIST_ROWS_MAX: Final = 10
LIST_SECTION_TITLE_MAX_CHARS: Final = 24
LIST_ROW_ID_MAX_CHARS: Final = 200
LIST_ROW_TITLE_MAX_CHARS: Final = 24
LIST_ROW_DESCRIPTION_MAX_CHARS: Final = 72
CTA_DISPLAY_TEXT_MAX_CHARS: Final = 20

FLOW_CTA_MAX_CHARS: Final = 20
PRODUCT_LIST_SECTIONS_MAX: Final = 10
PRODUCT_LIST_ITEMS_MAX: Final = 30  # across all sections
PRODUCT_SECTION_TITLE_MAX_CHARS: Final = 24

CONTACTS_MAX: Final = 257
TEMPLATE_NAME_MAX_CHARS: Final = 512
TEMPLATE_BUTTON_INDEX_MAX: Final = 9
COUPON_CODE_MAX_CHARS: Final = 15
CAROUSEL_CARDS_MAX: Final = 10
