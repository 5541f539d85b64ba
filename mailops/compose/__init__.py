"""Composing a mail: a send request becomes the message the spec describes, with the reasons why."""

from mailops.compose.message import Composed, ComposeError, Failure, SendRequest, TemplateFiles, compose

__all__ = ["ComposeError", "Composed", "Failure", "SendRequest", "TemplateFiles", "compose"]
