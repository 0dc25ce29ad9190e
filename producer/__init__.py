"""The job contract: WhatsApp messages as validated models, and the client that enqueues them.

Services depend on this package alone; it imports nothing else of waq's.
"""

from producer.client import Enqueued, Producer, message_id_for
from producer.conversation_ids import ConversationIds, conversation_id_for
from producer.errors import (
    ConfigurationError,
    FieldError,
    IdempotencyKeyReused,
    InvalidRequest,
    WaqError,
)
from producer.events import EVENT_VERSION, Event, EventType
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
from producer.status import FINAL_STATES, MessageState, MessageStatus, StatusEvent
from producer.status_store import StatusStore
from producer.template import Language, Template
from producer.template_catalog import CatalogTemplate, TemplateCatalog
from producer.transitions import LANE_FUNCTION, Claim, Claimed, ClaimLimits, Outcome, Transitions

__all__ = [
    "EVENT_VERSION",
    "FINAL_STATES",
    "LANE_FUNCTION",
    "Audio",
    "AudioMessage",
    "ButtonInteractive",
    "CatalogTemplate",
    "Claim",
    "ClaimLimits",
    "Claimed",
    "ConfigurationError",
    "Contact",
    "ContactsMessage",
    "Context",
    "ConversationIds",
    "CtaUrlInteractive",
    "Document",
    "DocumentMessage",
    "Enqueued",
    "Event",
    "EventType",
    "FieldError",
    "IdempotencyKeyReused",
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
    "MessageState",
    "MessageStatus",
    "Outcome",
    "Producer",
    "Reaction",
    "ReactionMessage",
    "SendRequest",
    "StatusEvent",
    "StatusStore",
    "Sticker",
    "StickerMessage",
    "Template",
    "TemplateCatalog",
    "TemplateMessage",
    "Text",
    "TextMessage",
    "Transitions",
    "Video",
    "VideoMessage",
    "WaqError",
    "conversation_id_for",
    "message_adapter",
    "message_id_for",
    "normalize_recipient",
    "wa_id_of",
]
