"""Tool calls (OpenAI's `tools` / `tool_choice`, and the older `functions` / `function_call`), under steering.

A call is written in Hermes' format, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, which Qwen,
Hermes and many fine-tunes were trained on; templates that render tools in that format get the tools through the
template (`native`), every other model gets them from a generic system prompt (`GENERIC_PROMPT`). What the call
may contain is a grammar built from each function's JSON schema (the same converter and bounds as
`response_format`), so every returned call parses and its arguments validate:

- `required` or a named function: the whole answer is the grammar's, from its first token.
- `auto`: the answer is free text unless it opens with `<tool_call>`; from there the grammar applies (a lazy
  grammar, as llama.cpp's server does it), so the model decides, and its call is still constrained.
- `none`, or no tools: free text.

Steering applies to the free text; inside a call only when asked (`steer_arguments`): the call's structure is
the grammar's, and its strings are the user's data. `ToolPlan` turns a request into the grammar, the prompt and,
from an answer's text, the content and the calls.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_CALLS = 8  # calls one answer may make when parallel calls are allowed
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names

GENERIC_PROMPT = """You can call functions. Their signatures, as JSON schemas:
{signatures}
To call a function, answer with only:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments as the schema asks>}}}}
</tool_call>
A function's result comes back in a <tool_response> message. When no function is needed, answer in plain text."""


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def signature(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"index": index, **out} if index is not None else out


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools ask for: the functions, the choice (`auto`, `required`, `none` or a function's name),
    whether several calls may come in one answer, and whether the request used the older `functions` shape."""

    functions: tuple[Function, ...]
    choice: str
    parallel: bool = True
    legacy: bool = False

    @property
    def calls_possible(self) -> bool:
        return self.choice != "none" and bool(self.functions)

    def offered(self) -> tuple[Function, ...]:
        """The functions the answer may call: all, or the one named by tool_choice."""
        if self.choice in ("auto", "required", "none"):
            return self.functions
        return tuple(f for f in self.functions if f.name == self.choice)

    def grammar(self) -> str | None:
        """The GBNF of an answer that calls (None: no call possible): one call, or up to MAX_CALLS when parallel calls
        are allowed. Under `auto` it takes over once the answer opens with `OPEN` (`trigger`) and is fed what came so far."""
        if not self.calls_possible:
            return None
        from ..llama.grammar import schema_grammar

        alternatives = [{"type": "object", "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                         "required": ["name", "arguments"]} for f in self.offered()]
        schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
        where = "tools" if not self.legacy else "functions"
        call = re.sub(r"^root ::=", "tool-call ::=", schema_grammar(schema, f"{where}[].parameters"), flags=re.M)
        one = f'"{OPEN}" "\\n"? tool-call "\\n"? "{CLOSE}"'
        more = f'("\\n" {one}){{0,{MAX_CALLS - 1 if self.parallel else 0}}}'
        return f"root ::= [ \\t\\n]{{0,8}} {one} {more}\n{call}"

    @property
    def trigger(self) -> str | None:
        """The text that opens a call when the model chooses (`auto`): the grammar applies from there. "" = from the
        first token (required, named); None = no call."""
        if not self.calls_possible:
            return None
        return OPEN if self.choice == "auto" else ""

    def messages(self, messages: Sequence[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
        """The conversation for the chat template: assistant calls and tool results in the Hermes format, and the
        functions described by `GENERIC_PROMPT` in the system message unless the template renders tools itself."""
        out: list[dict[str, Any]] = []
        for m in messages:
            role, content = m.get("role"), m.get("content") or ""
            if role == "assistant" and (m.get("tool_calls") or m.get("function_call")):
                calls = m.get("tool_calls") or [{"function": m["function_call"]}]
                content += "".join(f"{OPEN}\n{json.dumps(_call_json(c), ensure_ascii=False)}\n{CLOSE}" for c in calls)
                out.append({"role": "assistant", "content": content})
            elif role in ("tool", "function"):  # a template that renders tools wraps results itself
                out.append({"role": "tool", "content": content} if native else {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            else:  # OpenAI's newer "developer" role is the system message chat templates know
                out.append({"role": "system" if role == "developer" else str(role), "content": content})
        if self.functions and not native:
            text = GENERIC_PROMPT.format(signatures="\n".join(json.dumps(f.signature(), ensure_ascii=False) for f in self.offered()))
            if self.choice not in ("auto", "none"):
                text += f"\nCall {'a function' if self.choice == 'required' else self.choice} now."
            if out and out[0]["role"] == "system":
                out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
            else:
                out.insert(0, {"role": "system", "content": text})
        return out

    def split(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """An answer's text as (content, calls): the text before the first call, and every complete call in it."""
        if not self.calls_possible or OPEN not in text:
            return text, []
        head, _, rest = text.partition(OPEN)
        calls = []
        for body in re.findall(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), OPEN + rest, flags=re.S):
            try:
                data = json.loads(body)
            except ValueError:  # cut by max_tokens: an incomplete call is not returned
                continue
            calls.append(ToolCall("call_" + uuid.uuid4().hex[:24], str(data["name"]), json.dumps(data["arguments"], ensure_ascii=False)))
        return (head.strip() or None), calls


def _call_json(call: Any) -> dict[str, Any]:
    """{"name", "arguments"} of an earlier assistant call in OpenAI's shape (arguments as JSON text, or an object)."""
    fn = call.get("function", call) if isinstance(call, dict) else {}
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # kept as the text the caller sent
    return {"name": fn.get("name"), "arguments": args}


def plan(tools: Any = None, tool_choice: Any = None, functions: Any = None, function_call: Any = None,
         parallel_tool_calls: bool | None = None) -> ToolPlan | None:
    """The request's tools as a `ToolPlan` (None without tools); one line naming the field when malformed."""
    legacy = tools is None and functions is not None
    if tools is None and functions is None:
        if tool_choice not in (None, "none") or function_call not in (None, "none"):
            raise ConfigError("tool_choice is set but no tools are given", "send tools, or drop tool_choice", api_hint="send tools with tool_choice")
        return None
    if tools is not None and functions is not None:
        raise ConfigError("both tools and functions are given", "send tools (functions is its older form)", api_hint="send tools only")
    items = functions if legacy else tools
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{'functions' if legacy else 'tools'} must be a non-empty list", "fix tools", api_hint="send tools as a list")
    fns = []
    for i, item in enumerate(items):
        where = f"functions[{i}]" if legacy else f"tools[{i}]"
        spec = item if legacy else (item.get("function") if isinstance(item, dict) and item.get("type", "function") == "function" else None)
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}", "fix tools", api_hint=f"fix {where}")
        name, params = spec.get("name"), spec.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}.function.name must be 1-64 letters, digits, _ . or -", "fix the name", api_hint=f"fix {where}.function.name")
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.function.parameters must be a JSON schema object", "fix parameters", api_hint=f"fix {where}.function.parameters")
        fns.append(Function(name, str(spec.get("description") or ""), params))
    if len({f.name for f in fns}) < len(fns):
        raise ConfigError("two tools have the same name", "give each function its own name", api_hint="give each tool its own name")
    choice = _choice(function_call if legacy else tool_choice, [f.name for f in fns], legacy)
    return ToolPlan(tuple(fns), choice, parallel=parallel_tool_calls is not False and not legacy, legacy=legacy)


def _choice(value: Any, names: list[str], legacy: bool) -> str:
    field = "function_call" if legacy else "tool_choice"
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    name = value.get("name") if legacy and isinstance(value, dict) else (value.get("function") or {}).get("name") if isinstance(value, dict) else None
    if name in names:
        return str(name)
    raise ConfigError(f"{field} {json.dumps(value)[:80]} names no given function; use auto, none, required or one of {', '.join(names)}",
                      f"fix {field}", api_hint=f"fix {field}")


def native_tools(template: str | None) -> bool:
    """Whether a chat template renders `tools` itself, in the Hermes format calls are parsed in."""
    return bool(template) and "tools" in template and OPEN in template  # type: ignore[operator]
