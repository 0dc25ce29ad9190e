"""Every Redis key waq uses, in one place, with its type, lifetime and unit.

The producer owns this module because it is the one package every other imports.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ARQ_JOB_PREFIX",
    "BROADCASTS",
    "CONVERSATION_KEY_CONFIGURED",
    "DEAD_LETTERS",
    "DEAD_LETTER_COUNTS",
    "DEFAULT_QUEUE",
    "EVENTS",
    "EVENTS_CURSOR",
    "LATENCY_EDGES_S",
    "PAUSED_NUMBERS",
    "RECENT_CUSTOMERS_KEPT",
    "RECIPIENT_RECENT",
    "SENDERS",
    "SENDER_LAST_SUCCESS",
    "STATS_BUCKET_S",
    "STATS_KEEP_S",
    "TEMPLATES",
    "THROTTLED",
    "WEBHOOK_RAW_WANTED",
    "WEBHOOK_SEEN",
    "WEBHOOK_STATES",
    "WEBHOOK_SUBSCRIPTIONS",
    "WINDOWS_CLOSING",
    "broadcast",
    "broadcast_messages",
    "bulk_lane",
    "conversation",
    "dead_letter",
    "dead_letter_index",
    "lane",
    "lane_job",
    "message",
    "message_history",
    "opt_outs",
    "recent_customers",
    "recipient_messages",
    "stats",
    "subscription",
    "wamid",
    "webhook_delivery",
    "window",
]

DEFAULT_QUEUE: Final = "waq:queue"
"""zset, arq's queue: job id (= message id) scored by the time it may run, in ms."""

ARQ_JOB_PREFIX: Final = "arq:job:"
"""string, arq's job record (JSON, not pickle); expires after the status retention."""

PAUSED_NUMBERS: Final = "waq:paused"
"""hash, phone_number_id -> JSON {reason, code, since}; no TTL: an operator or probe resumes."""

SENDERS: Final = "waq:senders"
"""set, every phone_number_id a producer ever enqueued from; no TTL: how operators' commands
tell a number waq knows from a typo."""

SENDER_LAST_SUCCESS: Final = "waq:senders:last_success"
"""hash, phone_number_id -> Meta's timestamp (unix s) of the newest sent/delivered/read status;
no TTL: a failure report older than it cannot pause the number."""

TEMPLATES: Final = "waq:templates"
"""hash, "<name>:<language>" -> JSON {status, category, body_parameters}, plus "" -> the sync
time; replaced whole by each sync (worker.runner.sync_templates); absent: never synced."""

DEAD_LETTERS: Final = "waq:dlq"
"""zset, message id scored by the time it died (unix s); no TTL: ops drain it, and the
worker's sweep drops entries older than ``WAQ_DLQ_RETENTION_S``."""

DEAD_LETTER_COUNTS: Final = "waq:dlq_counts"
"""hash, "code:131047" / "suggestion:send_template" / "number:<id>" -> entries; no TTL."""


def dead_letter_index(label: str) -> str:
    """zset, the entries of one count label ("code:131047", "number:<id>"...) by death time.

    Scored in unix s: filtered listings page through it instead of reading the whole queue.
    Kept with the counts, in the same steps.
    """
    return f"waq:dlq:by:{label}"


def message(message_id: str) -> str:
    """hash, a message's status record (state, attempts, wamid, error...); TTL = retention, s.

    A dead message's record (and history) has no TTL: it goes with its dead letter.
    """
    return f"waq:msg:{message_id}"


def message_history(message_id: str) -> str:
    """list of JSON events, oldest first; TTL = retention, s."""
    return f"waq:msg:{message_id}:history"


def dead_letter(message_id: str) -> str:
    """string, a dead letter's JSON (request, attempts, final error, hint); no TTL.

    See ``DEAD_LETTERS``. A dead message's record and history are kept as long as its entry.
    """
    return f"waq:dlq:{message_id}"


def window(phone_number_id: str, wa_id: str) -> str:
    """string, unix time (s) of the customer's last inbound message; expires with the window."""
    return f"waq:{{{phone_number_id}}}:window:{wa_id}"


RECIPIENT_RECENT: Final = 50
"""How many of a recipient's newest message ids ``recipient_messages`` keeps."""


def recipient_messages(wa_id: str) -> str:
    """list, a recipient's newest message ids (``RECIPIENT_RECENT``), newest first.

    Over every sender; TTL = retention, s. How the console finds messages by phone number.
    """
    return f"waq:to:{wa_id}"


def wamid(wamid_: str) -> str:
    """string, the waq message id behind a wamid (for status webhooks); TTL = retention, s."""
    return f"waq:wamid:{wamid_}"


EVENTS: Final = "waq:events"
"""stream, every event of the deployment (``producer.events``): fields ``type`` and ``data``
(JSON); the entry id is the event's id. The worker's event pump trims it to about
``WAQ_EVENTS_MAXLEN`` entries, never past what it has not yet handed to subscriptions."""

EVENTS_CURSOR: Final = "waq:events:cursor"
"""string, the id of the last event the pump handed to webhook subscriptions; no TTL."""

WINDOWS_CLOSING: Final = "waq:windows:closing"
"""zset, "<phone_number_id>:<wa_id>" scored by when its service window closes (unix s); a
member leaves when its ``conversation.window_closing`` event is emitted."""

CONVERSATION_KEY_CONFIGURED: Final = "waq:conversation_key:configured"
"""string, a fingerprint of WAQ_CONVERSATION_KEY, written by processes that have it: a
producer without the key refuses to make up ids that would not match."""

WEBHOOK_SUBSCRIPTIONS: Final = "waq:webhooks"
"""hash, subscription id -> JSON (url, secrets, types, numbers, batching...); no TTL."""

WEBHOOK_RAW_WANTED: Final = "waq:webhooks:raw"
"""set, the subscriptions that want Meta's raw webhooks (``meta.webhook``); the gateway
adds those to the events only while this is not empty."""

WEBHOOK_STATES: Final = "waq:webhooks:state"
"""hash, subscription id -> JSON {state, reason, at} (absent: active); kept apart from the
subscription so Lua rewrites it without re-encoding the subscription's lists."""

WEBHOOK_SEEN: Final = "waq:webhook:seen"
"""hash, {verified_at, last_post_at} (unix s) of Meta's handshake and last signed POST."""


def conversation(conversation_id: str) -> str:
    """hash, {phone_number_id, wa_id, profile_name, created_at}.

    Expires ``WAQ_CONVERSATION_RETENTION_S`` after the customer's last message.
    """
    return f"waq:conv:{conversation_id}"


def subscription(subscription_id: str, part: str) -> str:
    """A webhook subscription's outbox keys, by ``part``.

    - ``due``: zset, each conversation with events waiting, scored by when its first is due
      (unix ms); a conversation in flight is scored at its claim deadline.
    - ``q:<conversation>``: list of events (``producer.events`` wire form), oldest first.
    - ``job``: hash {token, until, n}: the one delivery job that may claim (as a lane's).
    - ``tries``: hash, conversation -> failed attempts of its first event.
    - ``dead``: list of JSON {event, reason, status, at}: events it gave up on, oldest first.
    - ``log``: list of JSON attempts (status, latency, snippet), newest first, capped.
    - ``stats``: hash of counters (delivered, failed, dead, ...).

    No TTL: an outbox empties as its events are delivered or dead-lettered.
    """
    return f"waq:wh:{{{subscription_id}}}:{part}"


def webhook_delivery(kind: str, item_id: str) -> str:
    """string, marks one webhook item (inbound message id, or wamid:status) as handled; 8 days."""
    return f"waq:webhook:{kind}:{item_id}"


RATE_LIMITS: Final = "waq:rate:mps"
"""hash, phone_number_id -> configured messages per second (absent: the default); no TTL."""


def order(phone_number_id: str, wa_id: str) -> str:
    """list, the conversation's unfinished message ids in enqueue order; TTL = retention, s.

    Its head, and only its head, is in the sender's lane.
    """
    return f"waq:{{{phone_number_id}}}:order:{wa_id}"


def lane(phone_number_id: str) -> str:
    """zset, the sender's lane: each conversation's head, scored by when it is due (unix ms).

    A claimed message stays in it, scored at its claim deadline: a crashed worker's claims
    come due again. No TTL: emptied as messages become final.
    """
    return f"waq:{{{phone_number_id}}}:lane"


def bulk_lane(phone_number_id: str) -> str:
    """zset, the sender's lane for bulk traffic (``priority: bulk``), as ``lane`` for the rest.

    A claim serves ``lane`` first and gives this its share (``WAQ_BULK_SHARE``).
    """
    return lane(phone_number_id) + ":bulk"


def broadcast(broadcast_id: str) -> str:
    """hash, a broadcast: ``spec`` (JSON), ``total``, ``state``, and its funnel; no TTL.

    ``state`` is active, paused or cancelled. The funnel (queued, sent, delivered, read, failed,
    dead, cancelled, and ``done``: left the queue for good) is counted by the transition scripts.
    """
    return f"waq:bc:{broadcast_id}"


BROADCASTS: Final = "waq:broadcasts"
"""zset, every broadcast id scored by when it was created (unix s); no TTL."""


def broadcast_messages(broadcast_id: str) -> str:
    """set, the message ids of a broadcast (for cancelling it); no TTL."""
    return f"waq:bc:{broadcast_id}:ids"


def opt_outs(phone_number_id: str) -> str:
    """set, the customers (wa_ids) who told this sender to stop; no TTL: START removes one."""
    return f"waq:{{{phone_number_id}}}:optouts"


RECENT_CUSTOMERS_KEPT: Final = 100
"""How many customers ``recent_customers`` keeps per sender."""


def recent_customers(phone_number_id: str) -> str:
    """zset, the ``RECENT_CUSTOMERS_KEPT`` customers (wa_ids) who wrote to this sender last.

    Scored by when (unix s); expires a window after the last. The console's health page
    suggests them for a test message (a keyspace SCAN of the windows did, before).
    """
    return f"waq:{{{phone_number_id}}}:recent"


def lane_job(phone_number_id: str) -> str:
    """hash, the lane's job: {token, until, n, pending}; no TTL.

    ``token`` names the one lane job that may claim (absent: the lane is idle, and the next
    message starts a job); ``until`` is set while that job sleeps; ``n`` numbers the tokens;
    ``pending`` counts the sender's messages not yet final.
    """
    return f"waq:{{{phone_number_id}}}:lane:job"


def number_rate(phone_number_id: str) -> str:
    """string, GCRA theoretical arrival time (unix s) of the number's next slot; short TTL."""
    return f"waq:{{{phone_number_id}}}:rate:number"


def pair_rate(phone_number_id: str, wa_id: str) -> str:
    """string, GCRA theoretical arrival time (unix s) of the pair's next slot; short TTL."""
    return f"waq:{{{phone_number_id}}}:rate:pair:{wa_id}"


THROTTLED: Final = "waq:throttled"
"""zset, every scope (a number or "app") Meta throttled, scored by when its slowdown has worn
off (unix s); members past it are dropped by the next slowdown: operators' reads find the
throttled numbers here, not by a SCAN."""


STATS_BUCKET_S: Final = 10
"""The width of a stats bucket, s."""

STATS_KEEP_S: Final = 2 * 3600
"""How long a stats bucket is kept: the console charts the last hour."""

LATENCY_EDGES_S: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""The upper edges of the enqueue-to-accepted latency histogram's buckets (``lat:<i>``; the
last, ``lat:11``, is everything slower)."""


def stats(bucket: int) -> str:
    """hash, the pipeline's counters for one ``STATS_BUCKET_S`` bucket (unix s // width).

    Fields: ``queued``, ``sent:<number>``, ``retry:<number>``, ``dead:<code>``,
    ``delivered``, ``read``, ``lat:<i>`` (``LATENCY_EDGES_S``), ``depth`` (messages not yet
    final, written by the workers' sweep). Incremented once per batch by the steps
    themselves (per entry for dead letters and status webhooks); expires after
    ``STATS_KEEP_S``.
    """
    return f"waq:stats:{bucket}"


def slowdown(scope: str) -> str:
    """hash, {factor, at}: a rate divisor after Meta throttled ``scope`` (a number or "app")."""
    return f"waq:{{{scope}}}:rate:slowdown"
