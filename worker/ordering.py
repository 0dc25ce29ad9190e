"""Per-conversation order: messages to one (number, customer) leave in the order enqueued.

Meta does not keep order, so waq sends a conversation's next message only once the one
before it is final (accepted or dead). The producer appends each message id to the
conversation's list when it enqueues; a worker may send only the list's head. When the head
is final it is removed and the next message's job is woken at once (its deferred score is
set to now), so a waiting message costs no polling.
"""

from __future__ import annotations

import time
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from producer import keys
from producer.status import FINAL_STATES

__all__ = ["ConversationOrder"]

_FINAL = "{" + ", ".join(f"{state.value}=true" for state in FINAL_STATES) + "}"

# Pops heads that are final or whose record expired (a crash between recording the final
# state and popping), then answers whether ARGV[1] is the head. The heads' status hashes are
# read by name inside the script, which a single Redis (or Valkey) allows; a cluster would
# need the conversation's keys in one hash slot.
_IS_NEXT: Final = f"""
local final = {_FINAL}
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head or head == ARGV[1] then return {{1, head or ''}} end
  local state = redis.call('HGET', ARGV[2] .. head, 'state')
  if state and not final[state] then return {{0, head}} end
  redis.call('LPOP', KEYS[1])
end
"""

# Removes a final message and wakes the new head's job if it is waiting in the queue.
_DONE: Final = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
local head = redis.call('LINDEX', KEYS[1], 0)
if head then redis.call('ZADD', KEYS[2], 'XX', ARGV[2], head) end
return head
"""


class ConversationOrder:
    """Which message of a conversation may go next."""

    def __init__(self, redis: Redis, *, queue_name: str) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._is_next = redis.register_script(_IS_NEXT)
        self._done = redis.register_script(_DONE)

    async def waiting_for(self, phone_number_id: str, wa_id: str, message_id: str) -> str | None:
        """None if ``message_id`` may go now, else the id of the earlier message it waits for."""
        return self.parse_waiting_for(
            await self._is_next(
                keys=[keys.order(phone_number_id, wa_id)], args=[message_id, keys.message("")]
            )
        )

    async def waiting_for_into(
        self, pipe: Pipeline, phone_number_id: str, wa_id: str, message_id: str
    ) -> None:
        """Queue ``waiting_for`` on a caller's pipeline (its answer: ``parse_waiting_for``)."""
        await self._is_next(
            keys=[keys.order(phone_number_id, wa_id)],
            args=[message_id, keys.message("")],
            client=pipe,
        )

    @staticmethod
    def parse_waiting_for(answer: list[Any]) -> str | None:
        """The id waited for, from the order script's answer."""
        go, head = answer
        return None if go else (head.decode() if isinstance(head, bytes) else str(head))

    async def done(
        self, phone_number_id: str, wa_id: str, message_id: str, *, pipe: Pipeline | None = None
    ) -> None:
        """The message is final: let the next one go, now (on ``pipe`` if given)."""
        await self._done(
            keys=[keys.order(phone_number_id, wa_id), self.queue_name],
            args=[message_id, int(time.time() * 1000)],
            client=pipe,
        )
