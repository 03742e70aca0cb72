"""What a request hands the engine: the prompt text and request features, prepared and checked.

Chat messages are flattened to one text the way the router was trained (single prompts); text
that cannot be encoded as UTF-8 is repaired. Input that cannot be routed as given raises
:class:`InputError` (the API answers it with 422)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neural_router.inference.interface import RequestFeatures


class InputError(ValueError):
    """The request is valid but cannot be routed as given (unknown model, empty prompt, ...)."""


class PresetError(InputError):
    """Unknown preset name."""


@dataclass(frozen=True)
class PreparedPrompt:
    """One prompt ready for prediction: cleaned text and the request's features."""

    text: str
    features: RequestFeatures


def clean_text(text: str) -> str:
    """Replace lone surrogates (valid in JSON escapes, invalid UTF-8) so the tokenizer never sees them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _content_text(content: Any) -> tuple[str, bool, bool]:
    """(text, has_image, has_audio) of one message's content: a string or a list of parts."""
    if content is None:
        return "", False, False
    if isinstance(content, str):
        return content, False, False
    texts: list[str] = []
    has_image = has_audio = False
    for part in content:
        if not isinstance(part, Mapping):
            raise InputError("message content parts must be objects with a 'type'")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "image"):
            has_image = True
            texts.append("[image]")
        elif kind in ("input_audio", "audio"):
            has_audio = True
            texts.append("[audio]")
    return "\n".join(texts), has_image, has_audio


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[str, bool, bool, bool]:
    """Messages -> (prompt text, has_image, has_audio, has_tool_messages).

    Each message's text parts are joined by newlines (image parts read ``[image]``, audio parts
    ``[audio]``). If only one message carries any text, the prompt is that text alone (the router
    was trained on single prompts); otherwise it is ``"role: text"`` lines joined by newlines.
    Tool-role messages and assistant ``tool_calls`` count as tool use.
    """
    rendered: list[tuple[str, str]] = []
    has_image = has_audio = has_tools = False
    for m in messages:
        text, img, aud = _content_text(m.get("content"))
        has_image |= img
        has_audio |= aud
        has_tools |= m.get("role") == "tool" or bool(m.get("tool_calls"))
        if text.strip():
            rendered.append((str(m.get("role", "user")), text))
    if len(rendered) == 1:
        return rendered[0][1], has_image, has_audio, has_tools
    return "\n".join(f"{role}: {text}" for role, text in rendered), has_image, has_audio, has_tools
