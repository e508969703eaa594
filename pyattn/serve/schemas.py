"""Request bodies of the OpenAI endpoints, as pydantic models: FastAPI checks them before a route runs, and a
malformed body becomes a 400 in the OpenAI error shape (errors.py). Unknown fields are ignored, as clients send
options this server has no use for; options it cannot honour are refused by the routes with a message."""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = Union[StrictInt, StrictFloat]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EmbeddingRequest(_Body):
    model: StrictStr
    # token-id inputs (OpenAI accepts them) are parsed so that they can be refused with a clear message
    input: Union[StrictStr, List[StrictStr], List[StrictInt], List[List[StrictInt]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[StrictInt] = None
    user: Optional[StrictStr] = None
    truncate: Optional[StrictBool] = None  # text-embeddings-inference's option; default: the server's --auto-truncate


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[StrictStr, List[TextPart], None] = None
    name: Optional[StrictStr] = None


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr
    max_tokens: Optional[StrictInt] = Field(default=None, ge=0)
    temperature: Number = Field(default=1.0, ge=0, le=2)
    top_p: Number = Field(default=1.0, gt=0, le=1)
    n: StrictInt = Field(default=1, ge=1, le=16)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[StrictStr, List[StrictStr], None] = None
    seed: Optional[StrictInt] = None
    presence_penalty: Number = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: Number = Field(default=0.0, ge=-2, le=2)
    user: Optional[StrictStr] = None
    # llama.cpp server's extensions
    top_k: StrictInt = Field(default=0, ge=0)
    min_p: Number = Field(default=0.0, ge=0, le=1)
    repetition_penalty: Number = Field(default=1.0, gt=0)


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[StrictInt] = Field(default=None, ge=0)
    logprobs: Optional[StrictBool] = None
    top_logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=20)
    tools: Optional[List[Dict[str, Any]]] = None
    response_format: Optional[Dict[str, Any]] = None


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, List[StrictStr], List[StrictInt]]
    max_tokens: Optional[StrictInt] = Field(default=16, ge=0)  # OpenAI's default for completions
    logprobs: Optional[StrictInt] = Field(default=None, ge=0, le=5)
    echo: StrictBool = False
    suffix: Optional[StrictStr] = None
    best_of: Optional[StrictInt] = None
