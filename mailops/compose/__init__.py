"""Composing a mail: a send request becomes the message the spec describes, with the reasons why."""

from mailops.compose.message import Composed, ComposeError, Failure, SendRequest, compose

__all__ = ["ComposeError", "Composed", "Failure", "SendRequest", "compose"]
