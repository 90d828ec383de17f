"""helios_raw: an OpenAI-compatible LLM server written directly on asyncio and h11.

The public API, re-exported here, imports neither llama.cpp nor anything heavy.
"""

from .agent import Agent, AgentBackend, Tool, tool
from .config import (
    Config,
    ConfigError,
    LocalConfig,
    RemoteConfig,
    ServerConfig,
    load_config,
)
from .endpoints import (
    CustomEndpoint,
    EndpointBuilder,
    EndpointRequest,
    EndpointResponse,
    delete,
    endpoints_from_toml,
    get,
    patch,
    post,
    put,
)
from .errors import APIError
from .http.limits import Limits
from .http.request import Request
from .http.response import JSONResponse, Response, StreamingResponse
from .server import Server, ServerBuilder, serve

__version__ = "0.1.0"

__all__ = [
    "Agent", "AgentBackend", "APIError", "Config", "ConfigError", "CustomEndpoint", "EndpointBuilder", "EndpointRequest",
    "EndpointResponse", "JSONResponse", "Limits", "LocalConfig", "RemoteConfig", "Request", "Response",
    "Server", "ServerBuilder", "ServerConfig", "StreamingResponse", "Tool", "__version__", "delete",
    "endpoints_from_toml", "get", "load_config", "patch", "post", "put", "serve", "tool",
]
