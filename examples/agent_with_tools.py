"""Serve an agent with two tools: the model may look up the weather and the time.

    OPENAI_API_KEY=sk-... python examples/agent_with_tools.py --base-url https://api.openai.com/v1
    python examples/agent_with_tools.py --model models/qwen2.5-1.5b-instruct-q4_k_m.gguf   # local

or from the command line, over the backend a config file chooses::

    PYTHONPATH=examples python -m helios_raw --agent agent_with_tools:agent --config config.toml

Clients ask the model "assistant" as usual; the agent runs the tools the model calls (several at
once when it calls several) and answers when the model has what it needs. Tool calling needs a
model trained for it (OpenAI's models, Qwen2.5-Instruct, Llama 3.1+ ...); a very small model will
mostly answer without tools.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime
from typing import Literal, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from helios_raw import (
    Agent,
    Config,
    ConfigError,
    LocalConfig,
    RemoteConfig,
    Server,
    ServerBuilder,
    tool,
)
from helios_raw.backends import BackendError

# A stand-in for a weather service.
_WEATHER = {"paris": (18, "sunny"), "london": (14, "light rain"), "tokyo": (22, "cloudy")}


@tool
async def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """The current weather in a city.

    Args:
        city: The city's name in English, e.g. "Paris".
        unit: The temperature unit.
    """
    await asyncio.sleep(0.05)  # an async tool awaits its I/O without holding up other requests
    if city.lower() not in _WEATHER:
        raise ValueError(f"no weather data for {city}; known cities: Paris, London, Tokyo")
    celsius, sky = _WEATHER[city.lower()]
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "sky": sky}


@tool
def get_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone.

    Args:
        timezone: An IANA time zone name such as "Europe/Paris" or "Asia/Tokyo".
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}; use an IANA name like 'Europe/Paris'") from None
    return datetime.now(zone).strftime("%A %d %B %Y, %H:%M (%Z)")


agent = Agent(
    "assistant",
    system_prompt="You are a concise assistant. Use the tools for weather and time questions; "
                  "never guess them.",
    tools=[get_weather, get_time],
    max_iterations=5,
)


def build_server(config: Config, address: str = "127.0.0.1:8000") -> Server:
    """A server on ``address`` answering as the agent, over the backend ``config`` chooses."""
    return ServerBuilder.with_agent(agent, "assistant", config).address(address).build()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve an agent with weather and time tools.")
    parser.add_argument("--base-url", help="a remote OpenAI-compatible /v1 URL (its key in OPENAI_API_KEY)")
    parser.add_argument("--remote-model", default="gpt-4o-mini", help="the remote model (with --base-url)")
    parser.add_argument("--model", help="a local .gguf file (default: the default small model)")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT to listen on")
    args = parser.parse_args(argv)
    if args.base_url:
        config = Config(remote=RemoteConfig(model_name=args.remote_model, base_url=args.base_url,
                                         api_key=os.environ.get("OPENAI_API_KEY")))
    else:
        config = Config(local=LocalConfig(model_path=args.model, max_tokens=512))
    try:
        build_server(config, args.bind).serve()
    except (BackendError, ConfigError, ValueError) as exc:
        print(f"agent_with_tools: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
