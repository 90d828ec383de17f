"""Agents: a system prompt and Python tools, answering through the tool-call loop.

``from helios_raw import Agent, tool``; serve one with ``ServerBuilder.with_agent(agent, "name")``
or ``python -m helios_raw --agent module.path:object``.
"""

from .backend import AgentBackend
from .loop import DEFAULT_SYSTEM_PROMPT, Agent
from .tools import Tool, tool

__all__ = ["DEFAULT_SYSTEM_PROMPT", "Agent", "AgentBackend", "Tool", "tool"]
