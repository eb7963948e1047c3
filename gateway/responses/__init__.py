"""``POST /v1/responses`` bridged to chat completions, through the same pipeline as chat.

``refuse`` and ``to_chat`` turn a Responses request into the chat completion the policies and the
upstream see (``request``); ``Shape`` turns the chat answer back into a Responses object
(``answer``) and ``Events`` a chat stream into the Responses event sequence (``stream``).
"""

from gateway.responses.answer import Shape
from gateway.responses.request import refuse, to_chat
from gateway.responses.stream import TERMINAL, Events

__all__ = ["TERMINAL", "Events", "Shape", "refuse", "to_chat"]
