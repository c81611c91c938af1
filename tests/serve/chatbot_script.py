"""A llama-cpp-python chatbot script as users write them: tools, a repeat penalty, top_k=40.

tests/serve/test_tools.py runs it with its one `Llama(...)` line changed to `from sia_local import steered;
llm = steered(Llama(...), ...)`; MODEL, OBJECTIVE and OUT come from the test.
"""

import json

from llama_cpp import Llama

MODEL: str
OUT: dict

TOOLS = [{"type": "function", "function": {"name": "forecast", "description": "Weather forecast", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Oslo", "Paris"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"]}}}]


def forecast(city: str, days: int) -> str:
    return f"{city}: sun for {days} days"


llm = Llama(model_path=MODEL, n_ctx=4096, verbose=False)
messages = [{"role": "user", "content": "Weather in Oslo this week?"}]
reply = llm.create_chat_completion(messages=messages, tools=TOOLS, tool_choice="required", repeat_penalty=1.1, top_k=40,
                                   max_tokens=400, seed=0)
message = reply["choices"][0]["message"]
messages.append(message)
for call in message.get("tool_calls") or []:
    result = forecast(**json.loads(call["function"]["arguments"]))
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
answer = llm.create_chat_completion(messages=messages, tools=TOOLS, repeat_penalty=1.1, top_k=40, max_tokens=8, seed=0)
OUT["calls"], OUT["answer"] = message.get("tool_calls"), answer
