"""The job contract: WhatsApp messages as validated models, and the client that enqueues them.

Services depend on this package alone; it imports nothing else of waq's.
"""

from producer.errors import FieldError, InvalidRequest, WaqError
from producer.interactive import (
    ButtonInteractive,
    CtaUrlInteractive,
    Interactive,
    ListInteractive,
)
from producer.media import Audio, Document, Image, Media, Sticker, Video
from producer.messages import (
    AudioMessage,
    Contact,
    ContactsMessage,
    Context,
    DocumentMessage,
    ImageMessage,
    InteractiveMessage,
    Location,
    LocationMessage,
    Message,
    Reaction,
    ReactionMessage,
    StickerMessage,
    TemplateMessage,
    Text,
    TextMessage,
    VideoMessage,
    message_adapter,
)
from producer.recipient import normalize_recipient, wa_id_of
from producer.request import SendRequest
from producer.template import Language, Template

__all__ = [
    "Audio",
    "AudioMessage",
    "ButtonInteractive",
    "Contact",
    "ContactsMessage",
    "Context",
    "CtaUrlInteractive",
    "Document",
    "DocumentMessage",
    "FieldError",
    "Image",
    "ImageMessage",
    "Interactive",
    "InteractiveMessage",
    "InvalidRequest",
    "Language",
    "ListInteractive",
    "Location",
    "LocationMessage",
    "Media",
    "Message",
    "Reaction",
    "ReactionMessage",
    "SendRequest",
    "Sticker",
    "StickerMessage",
    "Template",
    "TemplateMessage",
    "Text",
    "TextMessage",
    "Video",
    "VideoMessage",
    "WaqError",
    "message_adapter",
    "normalize_recipient",
    "wa_id_of",
]
